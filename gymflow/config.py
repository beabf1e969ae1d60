"""Resolve a spec: YAML + globals + --set overrides + ${var} substitution, validated at once.

Precedence, lowest first: field defaults < spec file < --globals files < --set overrides.
Every problem is collected and raised together as one SpecError, before anything runs.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gymflow.errors import Problem, SpecError
from gymflow.problems import problems_from
from gymflow.spec import Spec

VAR_RE = re.compile(r"\$\{([^}]*)\}")
WELL_KNOWN = ("experiment", "trial_id", "seed", "date")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e5 and 3e-4 as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a SpecError naming the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([Problem("", f"invalid YAML: {where}{problem}")], source) from None


def _read_text(path: str | Path, what: str) -> str:
    """A local file, a file:// URI, or a file in a storage location (gs://, az://)."""
    from gymflow.storage import local_path, open_run

    text = str(path)
    file = local_path(text)
    if file is None:
        folder, _, name = text.rstrip("/").rpartition("/")
        store = open_run(folder)
        if not store.exists(name):
            raise SpecError([Problem("", f"{what} file not found: {text}. Check the URI.")])
        return store.read_text(name)
    if not file.is_file():
        raise SpecError([Problem("", f"{what} file not found: {file}. Check the path.")])
    return file.read_text(encoding="utf-8")


def load_mapping(path: str | Path, what: str = "spec") -> dict[str, Any]:
    """Read a YAML file (a path or URI) that must hold a mapping."""
    file = str(path)
    data = parse_yaml(_read_text(path, what), file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([Problem("", f"a {what} file must hold a mapping of fields, got {type(data).__name__}")], str(file))
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: override's values over base's, merging nested mappings."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], YAML-typed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError([Problem("--set", f"expected dotted.path=value, got {text!r} (for example --set budget.timesteps=50000)")])
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Set data[path] = value, creating mappings on the way; list items by index."""
    out = copy.deepcopy(data)
    node: Any = out
    for i, part in enumerate(path[:-1]):
        nxt = node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else None
        if isinstance(node, dict):
            nxt = node.get(part)
            if not isinstance(nxt, (dict, list)):
                nxt = node[part] = {}
        elif nxt is None:
            where = ".".join(path[: i + 1])
            raise SpecError([Problem(where, f"cannot set {'.'.join(path)}: {where} is not a mapping")])
        node = nxt
    last = path[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError([Problem(".".join(path), "cannot set this path: its parent is not a mapping")])
    return out


def _lookup(variables: dict[str, Any], name: str) -> tuple[bool, Any]:
    node: Any = variables
    for part in name.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def substitute(data: Any, variables: dict[str, Any], keep: Iterable[str] = (), path: str = "") -> tuple[Any, list[Problem]]:
    """Replace ${name} in every string; '$${' escapes. Unknown names are problems."""
    keep = tuple(keep)
    problems: list[Problem] = []

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}.{i}") for i, v in enumerate(node)]
        if not isinstance(node, str) or "${" not in node:
            return node
        return _substitute_string(node, where, variables, keep, problems)

    return walk(data, path), problems


def _substitute_string(text: str, where: str, variables: dict[str, Any], keep: tuple[str, ...], problems: list[Problem]) -> Any:
    whole = VAR_RE.fullmatch(text)
    if whole and whole.group(1) not in keep:
        found, value = _lookup(variables, whole.group(1))
        if found:
            return value  # a lone ${x} keeps the variable's type

    def replace(match: re.Match[str]) -> str:
        start = match.start()
        if start > 0 and text[start - 1] == "$":
            return match.group(0)
        name = match.group(1)
        if name in keep:
            return match.group(0)
        found, value = _lookup(variables, name)
        if not found:
            known = sorted(set(variables) | set(WELL_KNOWN))
            close = get_close_matches(name, known, n=1)
            hint = f" Did you mean ${{{close[0]}}}?" if close else ""
            problems.append(Problem(where, f"unknown variable ${{{name}}}.{hint} Define it in a --globals file; known: {', '.join(known)}"))
            return match.group(0)
        return str(value)

    return VAR_RE.sub(replace, text).replace("$${", "${")


def trial_id_for(spec: Spec) -> str:
    """A short, stable id derived from what the trial computes (not where it runs or is stored)."""
    content = spec.model_dump(mode="json", exclude={"storage", "trial_id", "backend", "tracking", "description", "sweep"})
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    algo = spec.algorithm.name
    return f"{algo}-s{spec.seed}-{digest}"


# --- resolution ------------------------------------------------------------------


def _deep_checks(data: dict[str, Any]) -> list[Problem]:
    """Checks against installed libraries, on every section that is valid by itself."""
    from gymflow import checks
    from gymflow.spec import AlgorithmSpec, EnvSpec

    try:
        data = Spec._lift_zoo_keys(data)  # type: ignore[operator]
    except ValueError:
        pass
    env = algo = None
    try:
        env = EnvSpec.model_validate(data.get("env"))
    except ValidationError:
        pass
    try:
        algo = AlgorithmSpec.model_validate(data.get("algorithm"))
    except ValidationError:
        pass
    problems: list[Problem] = []
    if env is not None:
        problems += checks.check_env(env)
    if algo is not None:
        problems += checks.check_algorithm(algo)
    if env is not None and algo is not None and not problems:
        problems += checks.check_spaces(env, algo)
    return problems


def load_raw(
    spec: str | Path | dict[str, Any], globals_files: Sequence[str | Path] = (), overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The merged raw spec (file < globals < --set), the globals' variables, and the source name."""
    source = None if isinstance(spec, dict) else str(spec)
    data = copy.deepcopy(spec) if isinstance(spec, dict) else load_mapping(spec)
    variables: dict[str, Any] = {}
    for file in globals_files:
        extra = load_mapping(file, what="globals")
        variables = deep_merge(variables, extra)
        data = deep_merge(data, {k: v for k, v in extra.items() if k in Spec.model_fields})
    for text in overrides:
        path, value = parse_override(text)
        data = apply_override(data, path, value)
    return data, variables, source


def resolve_data(data: dict[str, Any], variables: dict[str, Any], source: str | None = None,
                 trial_id: str | None = None, deep: bool = True) -> Spec:
    """Substitute, validate and check a merged raw spec; set its trial id."""
    variables = {**variables, "experiment": data.get("name", ""), "seed": data.get("seed", 0),
                 "date": _dt.date.today().isoformat()}
    data, problems = substitute(data, variables, keep=("trial_id",))
    try:
        resolved = Spec.model_validate(data)
    except ValidationError as exc:
        problems += problems_from(exc)
        resolved = None
    if deep:
        problems += _deep_checks(data)
    if problems or resolved is None:
        raise SpecError(_unique(problems), source)

    tid = trial_id or resolved.trial_id or trial_id_for(resolved)
    final, _ = substitute(resolved.model_dump(mode="json", exclude_none=False), {**variables, "trial_id": tid})
    final["trial_id"] = tid
    return Spec.model_validate(final)


def resolve(
    spec: str | Path | dict[str, Any],
    globals_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    trial_id: str | None = None,
    deep: bool = True,
) -> Spec:
    """The resolved, validated Spec; a SpecError with every problem otherwise."""
    data, variables, source = load_raw(spec, globals_files, overrides)
    return resolve_data(data, variables, source, trial_id, deep)


def input_source(spec: Spec | dict[str, Any] | None, spec_file: str | None, keep_trial_id: bool = True) -> str | dict[str, Any]:
    """What a flow was given to run: a spec file path/URI, or an inline spec (a UI form) as raw data."""
    if (spec is None) == (spec_file is None):
        which = "both were given" if spec is not None else "neither was given"
        raise SpecError([Problem("spec", f"give either `spec` (the spec inline) or `spec_file` (a path or URI of a "
                                         f"spec YAML file); {which}")])
    if spec_file is not None:
        return spec_file
    if isinstance(spec, Spec):
        return spec.model_dump(mode="json", exclude=None if keep_trial_id else {"trial_id"})
    return copy.deepcopy(spec)  # type: ignore[arg-type]


def resolve_input(
    spec: Spec | dict[str, Any] | None,
    spec_file: str | None,
    overrides: Sequence[str] = (),
    globals_files: Sequence[str | Path] = (),
    deep: bool = True,
) -> Spec:
    """The resolved Spec of a flow's inputs. An already resolved spec (it has a trial id) with nothing
    on top is used as it is; with overrides it gets a new trial id."""
    if isinstance(spec, Spec) and spec.trial_id and not overrides and not globals_files:
        return spec
    changed = bool(overrides or globals_files)
    return resolve(input_source(spec, spec_file, keep_trial_id=not changed), globals_files, overrides, deep=deep)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
