"""Expand a spec's sweep section into trials: grid x random samples x seeds, each a resolved Spec.

A trial's id comes from its resolved content (config.trial_id_for), so the same sweep
always yields the same ids, and so the same run directories: a rerun skips what finished
and resumes what did not.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from difflib import get_close_matches
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ValidationError

from gymflow import config
from gymflow.errors import Problem, clip, excerpt
from gymflow.results import EVAL_FILE, STATUS_FILE, EvalReport, Status
from gymflow.spec import Distribution, LocalBackendSpec, Spec, SweepSpec

logger = logging.getLogger(__name__)

DASK_ADDRESS_ENV = "GYMFLOW_DASK_ADDRESS"
REUSE_WORKERS_S = 30.0  # how long a sweep's finished worker waits for the next trial of its Dask worker


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in get_args(candidate):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


_NOT_SWEPT = {"sweep": "the sweep section cannot sweep itself", "trial_id": "gymflow sets each trial's id",
              "name": "every trial of a sweep belongs to one experiment; run another sweep for another name"}


def check_path(path: str) -> str | None:
    """None when path names a spec field (anything below a mapping field is allowed); else why not."""
    model: type[BaseModel] | None = Spec
    parts = path.split(".")
    if parts[0] in _NOT_SWEPT:
        return f"{path!r} cannot be swept: {_NOT_SWEPT[parts[0]]}"
    for i, part in enumerate(parts):
        if model is None:
            return None
        if part not in model.model_fields or (model is Spec and part in _NOT_SWEPT):
            fields = [f for f in model.model_fields if not (model is Spec and f in _NOT_SWEPT)]
            prefix = ".".join(parts[:i])
            options = [f"{prefix}.{f}" if prefix else f for f in fields]
            close = get_close_matches(path, [k for k in _known_paths() if k != path], n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            return f"{excerpt(path)} is not a spec field.{hint} Fields here: {', '.join(options)}"
        annotation = model.model_fields[part].annotation
        if get_origin(annotation) is dict or annotation is dict:
            return None  # hyperparams, kwargs, scenario: free-form below
        model = _model_of(annotation)
    return None


def _known_paths() -> list[str]:
    out = []
    for name, field in Spec.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is None:
            out.append(name)
        else:
            out += [f"{name}.{f}" for f in sub.model_fields]
    out = [p for p in out if p.split(".")[0] not in _NOT_SWEPT]
    return out + ["algorithm.hyperparams.learning_rate", "algorithm.hyperparams.gamma", "algorithm.hyperparams.batch_size"]


def _draw(dist: Distribution, rng: np.random.Generator) -> Any:
    if dist.distribution == "choice":
        values = dist.values or []  # validated non-empty
        return values[int(rng.integers(len(values)))]
    low, high = float(dist.low or 0.0), float(dist.high or 0.0)
    if dist.distribution == "uniform":
        return float(rng.uniform(low, high))
    if dist.distribution == "loguniform":
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return int(rng.integers(int(low), int(high) + 1))


def combinations(sweep: SweepSpec, default_seed: int) -> list[dict[str, Any]]:
    """Every trial's overrides {dotted path: value}, grid x random x seeds, in a stable order."""
    grid = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())] or [{}]
    samples: list[dict[str, Any]] = [{}]
    if sweep.random is not None:
        rng = np.random.default_rng(sweep.random.seed)
        samples = [{path: _draw(d, rng) for path, d in sweep.random.params.items()} for _ in range(sweep.random.n)]
    seeds = sweep.seeds or [default_seed]
    return [{**g, **r, "seed": seed} for g in grid for r in samples for seed in seeds]


def _problems_of_paths(sweep: SweepSpec) -> list[Problem]:
    problems = []
    for section, paths in (("grid", list(sweep.grid)), ("random.params", list(sweep.random.params) if sweep.random else [])):
        for path in paths:
            why = check_path(path)
            if why:
                problems.append(Problem(f"sweep.{section}.{path}", why))
    return problems


MAX_TRIALS = 10_000


def section_problems(raw: Any) -> list[Problem]:
    """The sweep section's paths, when the section is valid by itself (the spec's own validation reports the rest)."""
    try:
        section = SweepSpec.model_validate(raw)
    except ValidationError:
        return []
    return _problems_of_paths(section)


def expand_data(data: dict[str, Any], variables: dict[str, Any], base: Spec) -> tuple[list[Spec], list[Problem]]:
    """Every trial of a merged raw spec's sweep (base: that spec resolved, with its sweep section), each resolved
    and checked; and every problem of any of them."""
    sweep = base.sweep
    if sweep is None:
        return [base], []
    problems = _problems_of_paths(sweep)
    count = max(1, len(sweep.seeds)) * (sweep.random.n if sweep.random else 1)
    for values in sweep.grid.values():
        count *= len(values)
    if count > MAX_TRIALS:
        return [], problems + [Problem("sweep", f"expands to {count:,} trials, more than {MAX_TRIALS:,}; sweep fewer values "
                                                "or use random: {n: ...} to sample the grid")]
    if problems:
        return [], problems
    trials: dict[str, Spec] = {}
    for combo in combinations(sweep, base.seed):
        raw = copy.deepcopy(data)
        raw.pop("sweep", None)
        for path, value in combo.items():
            raw = config.apply_override(raw, path.split("."), value)
        trial, _, found = config.check_data(raw, variables)
        if trial is None:
            varied = ", ".join(f"{k}={v!r}" for k, v in combo.items())
            problems += [Problem(p.path, f"{p.message} (in the trial with {clip(varied, 200)})") for p in found]
            continue
        trials.setdefault(trial.trial_id or "", trial)
    return list(trials.values()), list(dict.fromkeys(problems))


def expand(spec_file: str | Path | dict[str, Any], globals_files: Sequence[str | Path] = (),
           overrides: Sequence[str] = ()) -> tuple[Spec, list[Spec]]:
    """The resolved sweep spec and its trials; a SpecError with every problem otherwise: preflight.check with
    sweep=True, without the backend check and the build check."""
    from gymflow import preflight

    plan = preflight.check(spec_file, globals_files, overrides, sweep=True, build=False)
    return plan.base, plan.trials


def pin_for_workers(trial: Spec, tracking_uri: str) -> Spec:
    """Absolute storage and tracking locations, so a Dask worker started elsewhere writes to the same places."""
    from gymflow.storage import local_path

    updates: dict[str, Any] = {}
    path = local_path(trial.storage)
    if path is not None and not path.is_absolute():
        updates["storage"] = str(path.resolve())
    if trial.tracking.uri is None:
        updates["tracking"] = trial.tracking.model_copy(update={"uri": tracking_uri})
    return trial.model_copy(update=updates) if updates else trial


def varied_paths(sweep: SweepSpec) -> list[str]:
    """The dotted spec paths a sweep varies (its grid's and its random search's), sorted."""
    return sorted({*sweep.grid, *(sweep.random.params if sweep.random else {})})


def varied_values(spec: Spec, paths: list[str]) -> dict[str, Any]:
    """The values a trial has at the swept paths (for tables and grouping)."""
    data = spec.model_dump(mode="json")
    out = {}
    for path in paths:
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[path] = node
    return out


def dask_address(sweep: SweepSpec, given: str | None = None) -> str | None:
    """The Dask scheduler to use: the flow's argument, the spec's, the environment's; None for a local cluster."""
    return given or sweep.dask_address or os.environ.get(DASK_ADDRESS_ENV) or None


def finished_report(spec: Spec) -> EvalReport | None:
    """The evaluation of a trial whose run dir holds a completed one; None when it has to run (again)."""
    from gymflow.storage import open_run

    try:
        store = open_run(spec.storage)
        if not store.exists(EVAL_FILE):
            return None
        status = Status.model_validate(store.read_json(STATUS_FILE))
        report = EvalReport.model_validate(store.read_json(EVAL_FILE))
    except Exception:  # noqa: BLE001 - anything unreadable is simply run again
        return None
    return report if status.state == "completed" and status.phase == "evaluate" else None


def slots(pending: int, max_parallel: int | None, remote: bool = False) -> int:
    """Trials running at once: as asked, else one per CPU core (and no more than there are trials); trials that work on
    machines of their own (remote) all at once."""
    return max_parallel or (pending or 1 if remote else min(pending or 1, os.cpu_count() or 1))


def for_local_slots(todo: list[Spec], workers: int, remote: bool) -> list[Spec]:
    """Local trials' worker settings for a sweep, where the user left them unset: on a local cluster every trial
    trains on this machine and gets its share of the cores (two trainings with all cores each ran ~6x slower),
    and a finished worker is kept warm for the next trial of its Dask worker."""
    threads = None if remote else max(1, (os.cpu_count() or 1) // workers)
    out = []
    for trial in todo:
        if not isinstance(trial.backend, LocalBackendSpec):
            out.append(trial)
            continue
        update: dict[str, Any] = {}
        if threads is not None and trial.backend.torch_threads is None:
            update["torch_threads"] = threads
        if trial.backend.reuse_workers_s is None:
            update["reuse_workers_s"] = REUSE_WORKERS_S
        out.append(trial.model_copy(update={"backend": trial.backend.model_copy(update=update)}) if update else trial)
    return out
