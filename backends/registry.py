"""Find backends by name: the entry-point group ``gymflow.backends``, or ``"package.module:Class"``.

Entry points are loaded one by one; a plugin that fails to import is logged and skipped
(and named in the error if the spec asks for it), so one broken plugin cannot break
every run.
"""

from __future__ import annotations

import logging
from difflib import get_close_matches
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from backends.base import Backend
from gymflow.errors import Problem, SpecError
from gymflow.spec import ENTRY_POINT_RE, Spec

logger = logging.getLogger(__name__)

GROUP = "gymflow.backends"


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def reset() -> None:
    """Forget cached entry points (tests that install a plugin call this)."""
    _entry_points.cache_clear()


def available() -> dict[str, type[Backend] | str]:
    """Registered backends by name: the class, or why it could not be loaded."""
    out: dict[str, type[Backend] | str] = {}
    for name, ep in sorted(_entry_points().items()):
        try:
            out[name] = _as_backend(ep.load(), name)
        except Exception as exc:  # noqa: BLE001 - report, don't crash
            logger.warning("backend plugin %r failed to load: %s", name, exc)
            out[name] = f"failed to load: {type(exc).__name__}: {exc}"
    return out


def _as_backend(obj: Any, name: str) -> type[Backend]:
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise TypeError(f"{name!r} is not a gymflow Backend subclass")
    return obj


def resolve(kind: str) -> type[Backend]:
    """The backend class for a kind; SpecError naming the registered ones otherwise."""
    if ENTRY_POINT_RE.match(kind):
        from gymflow.imports import import_object

        try:
            return _as_backend(import_object(kind), kind)
        except Exception as exc:  # noqa: BLE001
            raise SpecError([Problem("backend.kind", f"cannot load backend {kind!r}: {type(exc).__name__}: {exc}")]) from None
    found = available().get(kind)
    if isinstance(found, type):
        return found
    names = [n for n, v in available().items() if isinstance(v, type)]
    if isinstance(found, str):
        raise SpecError([Problem("backend.kind", f"backend {kind!r} is installed but {found}")])
    close = get_close_matches(kind, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise SpecError([Problem("backend.kind", f"unknown backend {kind!r}.{hint} Registered: {', '.join(names)}; "
                                             f"or give 'package.module:Class', or register one in the '{GROUP}' entry-point group")])


def settings_for(cls: type[Backend], spec: Spec) -> BaseModel:
    """The backend's own settings model, validated from the spec's backend section."""
    return _settings(cls, spec.backend.model_dump(mode="json"))


def settings_for_kind(cls: type[Backend], kind: str) -> BaseModel:
    """The backend's settings with every default (`gymflow gc --backend KIND` without a spec)."""
    return _settings(cls, {"kind": kind})


def _settings(cls: type[Backend], raw: dict[str, Any]) -> BaseModel:
    try:
        return cls.Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [Problem(".".join(["backend", *map(str, e["loc"])]), e["msg"]) for e in exc.errors(include_url=False)]
        raise SpecError(problems) from None


def create(spec: Spec) -> Backend:
    """The configured backend for a spec; SpecError if the backend cannot run it."""
    cls = resolve(spec.backend.kind)
    backend = cls(settings_for(cls, spec))
    problems = backend.check(spec)
    if problems:
        raise SpecError(problems)
    return backend


def problems(spec: Spec) -> list[Problem]:
    """Why the spec's backend cannot run it ([] when it can): the backend check that preflight.check is handed."""
    try:
        create(spec)
    except SpecError as exc:
        return exc.problems
    return []


def notes(trials: list[Spec], max_parallel: int | None) -> list[str]:
    """The notes of the trials' backend(s) for `gymflow validate` (each backend is asked about its own trials)."""
    kinds: dict[str, list[Spec]] = {}
    for trial in trials:
        kinds.setdefault(trial.backend.kind, []).append(trial)
    return [note for group in kinds.values() for note in create(group[0]).notes(group, max_parallel)]
