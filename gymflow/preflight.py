"""Everything `gymflow run`, `gymflow sweep` and `gymflow validate` check before anything exists.

One function, used by all three and by the flows, so that what validate passes is what
run and sweep accept. Every stage reports at once: the files (size, encoding, YAML), the
fields, the libraries (env ids, wrappers, hyperparameter names), the sweep section and
every trial it expands to, each trial's run directory, the tracking store (reached once,
briefly), the backend, and finally each distinct algorithm built once on its env in a
subprocess (gymflow.buildcheck). A SpecError carries every problem found.

The backend check is handed in by the caller: backends sit above this package.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymflow import buildcheck, checks, config, locations
from gymflow.errors import Problem, SpecError
from gymflow.spec import Spec

BackendCheck = Callable[[Spec], list[Problem]]


@dataclass(frozen=True)
class Plan:
    """A checked spec: the resolved base spec, and the trials it stands for (itself, or its sweep's)."""

    base: Spec
    trials: list[Spec]


def check(spec: str | Path | dict[str, Any], globals_files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
          *, sweep: bool | None = None, backend_check: BackendCheck | None = None, build: bool = True,
          run_dirs: bool = False) -> Plan:
    """The checked Plan, or a SpecError with every problem of every stage.

    sweep: True requires a sweep section (gymflow sweep); None checks one when the spec has it (run, validate).
    run_dirs: also refuse trials whose run dir holds another trial or has a live owner (run, sweep; not validate).
    """
    from gymflow import sweep as sweeps

    data, variables, source = config.load_raw(spec, globals_files, overrides)
    base, substituted, problems = config.check_data(copy.deepcopy(data), variables)
    trials: list[Spec] = [base] if base is not None else []
    has_sweep = data.get("sweep") is not None
    if sweep and not has_sweep:
        problems.append(Problem("sweep", "this spec has no sweep section: add one (sweep: {grid: {...}, seeds: [0, 1, 2]}) "
                                         "or run a single trial with `gymflow run`"))
    if has_sweep:
        if base is not None and base.sweep is not None:
            trials, more = sweeps.expand_data(data, variables, base)
            problems += more
            address = sweeps.dask_address(base.sweep)
            if address:
                field = "sweep.dask_address" if base.sweep.dask_address else sweeps.DASK_ADDRESS_ENV
                problems += locations.dask_problems(address, field)
        else:
            problems += sweeps.section_problems(substituted.get("sweep"))
    problems += _where_problems(trials, substituted)
    if run_dirs and not problems:
        problems += _owned_problems(trials)
    if backend_check is not None:
        problems += _each(trials, lambda t: t.backend.model_dump(mode="json"), backend_check)
    if build and not any(p.path.split(".")[0] in ("env", "algorithm") for p in problems):
        pairs = [(t.env, t.algorithm) for t in trials]
        if not trials:  # the spec is wrong elsewhere: its env and algorithm are still built, so all is said at once
            env, algo = checks.sections(substituted)
            pairs = [(env, algo)] if env is not None and algo is not None else []
        problems += buildcheck.check(pairs)
    problems = list(dict.fromkeys(problems))
    if problems or base is None:
        raise SpecError(problems or [Problem("", "the spec is not valid")], source)
    return Plan(base, trials)


def _where_problems(trials: list[Spec], substituted: dict[str, Any]) -> list[Problem]:
    """Run directories and tracking stores: those of the trials, else the raw spec's strings."""
    storages = {t.storage for t in trials}
    create = {t.storage for t in trials if t.create_bucket}
    uris = {t.tracking.uri for t in trials}
    if not trials:
        raw_storage = substituted.get("storage", "")
        create = {raw_storage} if substituted.get("create_bucket") is True and isinstance(raw_storage, str) else set()
        storages = {raw_storage} if isinstance(raw_storage, str) and "${" not in raw_storage.replace("${trial_id}", "") else set()
        tracking = substituted.get("tracking")
        raw_uri = tracking.get("uri") if isinstance(tracking, dict) else None
        uris = {raw_uri} if raw_uri is None or isinstance(raw_uri, str) else set()
    problems: list[Problem] = []
    for storage in sorted(storages):
        problems += locations.storage_problems(storage, create=storage in create)
    for uri in sorted(uris, key=str):
        problems += locations.tracking_problems(uri)
    return problems


def _owned_problems(trials: list[Spec]) -> list[Problem]:
    """Run dirs in use or holding other trials: every local one; remote ones for a few trials (two reads each;
    the flow's claim refuses the rest)."""
    from gymflow import ownership
    from gymflow.storage import local_path

    problems: list[Problem] = []
    for trial in trials:
        if local_path(trial.storage) is not None or len(trials) <= _REMOTE_OWNER_CHECKS:
            problems += [Problem(p.path if len(trials) == 1 else f"{p.path} (trial {trial.trial_id})", p.message)
                         for p in ownership.run_dir_problems(trial)]
    return problems


_REMOTE_OWNER_CHECKS = 8


def _each(trials: list[Spec], key: Callable[[Spec], Any], check_one: BackendCheck) -> list[Problem]:
    """check_one on one trial per distinct key."""
    seen: set[str] = set()
    problems: list[Problem] = []
    for trial in trials:
        k = json.dumps(key(trial), sort_keys=True, default=str)
        if k not in seen:
            seen.add(k)
            problems += check_one(trial)
    return problems
