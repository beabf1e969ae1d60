"""Import what a spec names as 'package.module:Attr' (envs, wrappers, extractors, backends)."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """Import 'package.module:Attr' (Attr may be dotted); ImportError/AttributeError propagate with their reason."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
