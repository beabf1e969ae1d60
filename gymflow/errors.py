"""A small exception hierarchy. Every user-facing error says what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def clip(text: str, limit: int = 300) -> str:
    """Text cut to about `limit` characters: an error message never echoes a whole input."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def excerpt(value: Any, limit: int = 60) -> str:
    """repr(value), cut to about `limit` characters."""
    return clip(repr(value), limit)


class GymflowError(Exception):
    """Base class of every error gymflow raises on purpose."""


class UserError(GymflowError):
    """Bad input from the user: reported as a clear message with exit code 2, no traceback."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in a spec: the dotted field path and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


MAX_SHOWN = 50  # problems listed in one message


class SpecError(UserError):
    """A spec that cannot be run. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''}{where}:"]
        lines += [f"  - {Problem(clip(p.path, 120), p.message)}" for p in self.problems[:MAX_SHOWN]]
        if count > MAX_SHOWN:
            lines.append(f"  … and {count - MAX_SHOWN} more")
        super().__init__("\n".join(lines))


class MissingExtraError(UserError):
    """An optional dependency is needed for what was asked."""

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the '{module}' package, which is not installed. "
            f'Install it with: pip install "gymflow[{extra}]"'
        )


class StorageError(GymflowError):
    """Reading or writing a run directory failed; `status` is the service's HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RunDirError(UserError):
    """A run directory is missing something the worker needs."""


class WorkerError(GymflowError):
    """Training or evaluation failed inside the worker."""
