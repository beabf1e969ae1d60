"""Resolve a spec: YAML + globals + --set overrides + ${var} substitution, validated at once.

Precedence, lowest first: field defaults < spec file < --globals files < --set overrides.
Every problem is collected and raised together as one SpecError, before anything runs.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gymflow import checks, yamlio
from gymflow.errors import Problem, SpecError, excerpt
from gymflow.problems import problems_from
from gymflow.spec import Spec
from gymflow.variables import VAR_RE, WELL_KNOWN, substitute

__all__ = ["VAR_RE", "WELL_KNOWN", "substitute"]


def parse_yaml(text: str, source: str) -> Any:
    """Parse bounded YAML text (gymflow.yamlio); any problem becomes a SpecError naming the line."""
    return yamlio.parse(text, source)


def _read_text(path: str | Path, what: str) -> str:
    """A local file, a file:// URI, or a file in a storage location (gs://, az://): UTF-8, size-bounded."""
    from gymflow.storage import local_path, open_run

    text = str(path)
    file = local_path(text)
    if file is None:
        folder, _, name = text.rstrip("/").rpartition("/")
        store = open_run(folder)
        if not store.exists(name):
            raise SpecError([Problem("", f"{what} file not found: {text}. Check the URI.")])
        return yamlio.decode(store.read_bytes(name), text)
    if file.is_dir():
        raise SpecError([Problem("", f"{what} file {file} is a folder; give the YAML file in it")])
    if not file.exists():
        raise SpecError([Problem("", f"{what} file not found: {file}. Check the path.")])
    if not file.is_file():
        raise SpecError([Problem("", f"{what} file {file} is not a regular file; give a YAML file")])
    try:
        yamlio.check_size(file.stat().st_size, text)  # refused before it is read
        return yamlio.decode(file.read_bytes(), text)
    except OSError as exc:
        raise SpecError([Problem("", f"cannot read the {what} file {file}: {exc.strerror or exc}")]) from None


def load_mapping(path: str | Path, what: str = "spec") -> dict[str, Any]:
    """Read a YAML file (a path or URI) that must hold a mapping; an empty globals file is an empty mapping."""
    file = str(path)
    text = _read_text(path, what)
    data = parse_yaml(text, file)
    if data is None and what == "spec":
        empty = "is empty" if not text.strip() else "holds only comments"
        raise SpecError([Problem("", f"the file {empty}. A spec needs at least name, env, algorithm and budget; "
                                     "`gymflow init --algo ppo --env CartPole-v1` writes a complete one")], file)
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
        raise SpecError([Problem("--set", f"expected dotted.path=value, got {excerpt(text)} (for example --set budget.timesteps=50000)")])
    if key.count(".") >= yamlio.MAX_DEPTH:
        raise SpecError([Problem("--set", f"the path {excerpt(key)} is more than {yamlio.MAX_DEPTH} levels deep; a spec needs a handful")])
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


NOT_COMPUTED = frozenset({"storage", "create_bucket", "trial_id", "backend", "tracking", "description", "sweep"})


def trial_content(data: dict[str, Any]) -> dict[str, Any]:
    """Of a resolved spec (as JSON data), what the trial computes: everything but where it runs, is stored and
    tracked."""
    return {k: v for k, v in data.items() if k not in NOT_COMPUTED}


def trial_id_for(spec: Spec) -> str:
    """A short, stable id derived from what the trial computes (not where it runs or is stored)."""
    content = trial_content(spec.model_dump(mode="json"))
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    algo = spec.algorithm.name
    return f"{algo}-s{spec.seed}-{digest}"


# --- resolution ------------------------------------------------------------------


def _located(exc: SpecError, source: str | None) -> list[Problem]:
    """The problems of a file other than the spec, with that file named where a problem has no field."""
    if exc.source is None or exc.source == source:
        return exc.problems
    return [Problem(p.path or exc.source, p.message) for p in exc.problems]


def load_raw(
    spec: str | Path | dict[str, Any], globals_files: Sequence[str | Path] = (), overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The merged raw spec (file < globals < --set), the globals' variables, and the source name.
    A SpecError with the problems of every file and override at once."""
    source = None if isinstance(spec, dict) else str(spec)
    problems: list[Problem] = []
    data: dict[str, Any] = {}
    try:
        data = copy.deepcopy(spec) if isinstance(spec, dict) else load_mapping(spec)
    except SpecError as exc:
        problems += _located(exc, source)
    variables: dict[str, Any] = {}
    for file in globals_files:
        try:
            extra = load_mapping(file, what="globals")
        except SpecError as exc:
            problems += _located(exc, source)
            continue
        variables = deep_merge(variables, extra)
        data = deep_merge(data, {k: v for k, v in extra.items() if k in Spec.model_fields})
    for text in overrides:
        try:
            path, value = parse_override(text)
            data = apply_override(data, path, value)
        except SpecError as exc:
            problems += _located(exc, source)
    if problems:
        raise SpecError(_unique(problems), source)
    return data, variables, source


def non_finite(data: Any, where: str = "") -> list[Problem]:
    """Every NaN or infinity in the data: spec.json is JSON, where they do not exist (pydantic writes null)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(where, f"must be a finite number, got {data}; .nan and .inf cannot be trained on or stored")]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite(v, f"{where}.{i}")]
    return []


def check_data(data: dict[str, Any], variables: dict[str, Any], trial_id: str | None = None,
               deep: bool = True) -> tuple[Spec | None, dict[str, Any], list[Problem]]:
    """Substitute, validate and check a merged raw spec: the Spec with its trial id (None when there are
    problems), the substituted raw data, and every problem found."""
    known = {"experiment": data.get("name", ""), "seed": data.get("seed", 0), "date": _dt.date.today().isoformat()}
    variables = {**variables, **known}
    data, problems = substitute(data, variables, keep=("trial_id",))
    problems += non_finite(data)
    try:
        resolved: Spec | None = Spec.model_validate(data)
    except ValidationError as exc:
        problems += problems_from(exc)
        resolved = None
    if deep:
        problems += checks.deep_checks(data)
    problems = _unique(problems)
    if problems or resolved is None:
        return None, data, problems or [Problem("", "the spec is not valid")]
    tid = trial_id or resolved.trial_id or trial_id_for(resolved)
    # the defaults filled in by the model (storage: ./runs/${experiment}/${trial_id}) use the well-known variables too
    final, _ = substitute(resolved.model_dump(mode="json", exclude_none=False), {**known, "trial_id": tid})
    final["trial_id"] = tid
    return Spec.model_validate(final), data, []


def resolve_data(data: dict[str, Any], variables: dict[str, Any], source: str | None = None,
                 trial_id: str | None = None, deep: bool = True) -> Spec:
    """Substitute, validate and check a merged raw spec; set its trial id. SpecError with every problem otherwise."""
    resolved, _, problems = check_data(data, variables, trial_id, deep)
    if resolved is None:
        raise SpecError(problems, source)
    return resolved


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


def resolve_parameters(params: dict[str, Any]) -> Spec:
    """The trial a trial flow run's parameters stand for (spec or spec_file, overrides, globals_files), shallowly
    checked: for naming a flow run and for finding a run's run dir afterwards."""
    return resolve_input(params.get("spec"), params.get("spec_file"), params.get("overrides") or (),
                         params.get("globals_files") or (), deep=False)
