"""Turn pydantic validation errors of a Spec into Problems: the user's field path, a message that says what to do."""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches
from typing import Any

from pydantic import BaseModel, ValidationError

from gymflow.errors import Problem, clip, excerpt
from gymflow.spec import Spec


def _strip(tp: Any) -> Any:
    from typing import Annotated, get_args, get_origin

    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[tuple[set[str], Any]]:
    """Union members with the tags that select them (pydantic Tag or a Literal kind)."""
    from typing import Annotated, Literal, get_args, get_origin

    out = []
    for member in get_args(tp):
        tags: set[str] = set()
        if get_origin(member) is Annotated:
            tags |= {getattr(m, "tag") for m in get_args(member)[1:] if hasattr(m, "tag")}
        inner = _strip(member)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and "kind" in inner.model_fields:
            kind = inner.model_fields["kind"].annotation
            if get_origin(kind) is Literal:
                tags |= {str(a) for a in get_args(kind)}
        out.append((tags, inner))
    return out


def _walk_loc(loc: Sequence[Any]) -> tuple[str, type[BaseModel] | None]:
    """The user-facing dotted path of a pydantic loc, and the model holding its last part."""
    from types import UnionType
    from typing import Union, get_args, get_origin

    tp: Any = Spec
    parts: list[str] = []
    parent: type[BaseModel] | None = None
    for item in loc:
        tp = _strip(tp)
        if get_origin(tp) in (Union, UnionType):
            members = _members(tp)
            chosen = next((m for tags, m in members if str(item) in tags), None)
            if chosen is not None:
                tp = chosen
                continue
            tp = next((m for _, m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            parent = tp
            field = tp.model_fields.get(str(item))
            tp = field.annotation if field else None
        elif get_origin(tp) in (dict, list, tuple):
            parent = None
            tp = get_args(tp)[-1] if get_args(tp) else None
        else:
            parent, tp = None, None
        parts.append(str(item))
    return ".".join(parts), parent


def _message(err: dict[str, Any], parent: type[BaseModel] | None) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    name = str(err["loc"][-1]) if err["loc"] else ""
    if kind == "extra_forbidden":
        allowed = sorted(parent.model_fields) if parent else []
        close = get_close_matches(name, allowed, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown field.{hint} Allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return "required field is missing"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}, got {excerpt(value)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {excerpt(value)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {excerpt(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {excerpt(value)}"
    if kind in ("string_type", "dict_type", "model_type", "model_attributes_type", "list_type", "tuple_type"):
        expected = {"string_type": "a string", "list_type": "a list", "tuple_type": "a list"}.get(kind, "a mapping")
        return f"must be {expected}, got {type(value).__name__} {excerpt(value)}"
    if kind in ("string_too_short", "too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind in ("string_too_short", "too_short"):
        return f"must have at least {ctx.get('min_length')} {'characters' if kind.startswith('string') else 'items'}"
    if kind in ("string_too_long", "too_long"):
        return f"must have at most {ctx.get('max_length')} {'characters' if kind.startswith('string') else 'items'}"
    if kind == "string_pattern_mismatch":
        return f"invalid value {excerpt(value)}: use letters, digits, '_', '.', '-' (pattern {ctx.get('pattern')})"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {excerpt(value)}"
    return clip(err["msg"].removeprefix("Value error, "))


def problems_from(exc: ValidationError) -> list[Problem]:
    """One Problem per pydantic error of a Spec, with its path and a message that says what to do."""
    problems = []
    for err in exc.errors(include_url=False):
        path, parent = _walk_loc(tuple(err["loc"]))
        ctx = err.get("ctx") or {}
        if err["type"] == "hyperparam":  # raised on the algorithm (or spec) with the offending key
            problems.append(Problem(f"algorithm.hyperparams.{ctx['key']}", clip(str(ctx["message"]))))
            continue
        problems.append(Problem(path, _message(err, parent)))
    return problems
