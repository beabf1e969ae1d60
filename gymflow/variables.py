"""``${name}`` substitution in a raw spec.

A variable's value may itself use variables (``root: ${bucket}/runs``); they are resolved
when used, and a cycle (``${a}`` -> ``${b}`` -> ``${a}``) is a problem naming the chain,
never a value left half-substituted. ``$${`` writes a literal ``${``. A string that is only
``${name}`` takes the variable's value with its type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from difflib import get_close_matches
from typing import Any

from gymflow.errors import Problem

VAR_RE = re.compile(r"\$\{([^}]*)\}")
WELL_KNOWN = ("experiment", "trial_id", "seed", "date")
_CYCLE = object()
MAX_CHARS = 16_384


def lookup(variables: dict[str, Any], name: str) -> tuple[bool, Any]:
    """The value of a dotted variable name; (False, None) when it is not defined."""
    node: Any = variables
    for part in name.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


class _Substituter:
    def __init__(self, variables: dict[str, Any], keep: tuple[str, ...]) -> None:
        self.variables = variables
        self.keep = keep
        self.problems: list[Problem] = []
        self.resolved: dict[str, Any] = {}  # each variable is substituted once, however often it is used

    def walk(self, node: Any, where: str, chain: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            return {k: self.walk(v, f"{where}.{k}" if where else str(k), chain) for k, v in node.items()}
        if isinstance(node, list):
            return [self.walk(v, f"{where}.{i}", chain) for i, v in enumerate(node)]
        if not isinstance(node, str) or "${" not in node:
            return node
        return self.string(node, where, chain)

    def value(self, name: str, where: str, chain: tuple[str, ...]) -> tuple[bool, Any]:
        """A variable's value with its own variables substituted; _CYCLE after reporting a cycle."""
        found, value = lookup(self.variables, name)
        if not found:
            return False, None
        if name in chain:
            cycle = " -> ".join(f"${{{n}}}" for n in (*chain[chain.index(name):], name))
            self.problems.append(Problem(where, f"variable cycle {cycle}: a variable cannot refer back to itself; "
                                                "give one of them a plain value in the globals file"))
            return True, _CYCLE
        if name not in self.resolved:
            self.resolved[name] = self.walk(value, where, (*chain, name))
        return True, self.resolved[name]

    def string(self, text: str, where: str, chain: tuple[str, ...]) -> Any:
        whole = VAR_RE.fullmatch(text)
        if whole and whole.group(1) not in self.keep:
            found, value = self.value(whole.group(1), where, chain)
            if found:
                return None if value is _CYCLE else value  # a lone ${x} keeps the variable's type

        def replace(match: re.Match[str]) -> str:
            start = match.start()
            if start > 0 and text[start - 1] == "$":
                return match.group(0)
            name = match.group(1)
            if name in self.keep:
                return match.group(0)
            found, value = self.value(name, where, chain)
            if not found:
                self.problems.append(Problem(where, self._unknown(name)))
                return match.group(0)
            return "" if value is _CYCLE else str(value)

        out = VAR_RE.sub(replace, text).replace("$${", "${")
        if len(out) > MAX_CHARS:
            self.problems.append(Problem(where, f"substituting variables makes a value of {len(out):,} characters "
                                                f"(at most {MAX_CHARS:,}); check the variables it uses"))
            return ""
        return out

    def _unknown(self, name: str) -> str:
        known = sorted(set(self.variables) | set(WELL_KNOWN))
        close = get_close_matches(name, known, n=1)
        hint = f" Did you mean ${{{close[0]}}}?" if close else ""
        shown = ", ".join(known[:30]) + (", …" if len(known) > 30 else "")
        return f"unknown variable ${{{name[:60]}}}.{hint} Define it in a --globals file; known: {shown}"


def substitute(data: Any, variables: dict[str, Any], keep: Iterable[str] = (), path: str = "") -> tuple[Any, list[Problem]]:
    """Replace ${name} in every string; '$${' escapes. Unknown names and cycles are problems."""
    substituter = _Substituter(variables, tuple(keep))
    out = substituter.walk(data, path)
    return out, substituter.problems
