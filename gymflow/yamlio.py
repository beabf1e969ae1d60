"""Bounded YAML: the only way gymflow reads a spec, a globals file or a --set value.

A spec comes from users and from the Prefect UI, so its reader must refuse what would make
it hang, crash or lie, with one message that names the file, line and column:

- size: a file over MAX_BYTES is refused before it is parsed;
- text: a file that is not UTF-8 names the first bad byte's line and column;
- depth: nesting deeper than MAX_DEPTH (PyYAML composes recursively: 20,000 levels end in
  a RecursionError);
- aliases: a document whose aliases expand to more than MAX_NODES values ("billion laughs")
  or refer to themselves;
- duplicate keys: YAML says a mapping's keys are unique, PyYAML silently keeps the last one.

Safe tags only (``yaml.SafeLoader``): nothing in a spec is ever executed. YAML 1.2 floats
without a dot (``1e5``, ``3e-4``) are read as numbers, as users expect.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gymflow.errors import Problem, SpecError, excerpt

MAX_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


class _Refused(Exception):
    """A bound was exceeded while composing; carries the message and the mark."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """SafeLoader with bounded depth, no duplicate keys, and YAML 1.2 floats."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep; a spec needs a handful", mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, str):
                written = key_node.value if isinstance(key_node, ScalarNode) else key
                raise _Refused(f"the key {excerpt(written)} "
                               f"reads as {type(key).__name__} {excerpt(key)}; every key in a spec is a name: quote it",
                               key_node.start_mark)
            first = seen.get(key)
            if first is not None:
                raise _Refused(f"duplicate key {excerpt(key)} (first at line {first.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _expanded_size(root: Node) -> None:
    """Refuse a node graph that expands to more than MAX_NODES values or contains itself.

    Aliases make the composed graph a DAG whose expansion can be exponential in the text; the
    size of every node's expansion is counted once (memoised), so this is linear in the text.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_NODES:
                raise _Refused(f"its aliases expand to more than {MAX_NODES:,} values (an alias bomb?); "
                               "write the values out or use fewer aliases", node.start_mark)
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused("an alias refers to the node that contains it (a recursive structure); remove the cycle",
                           node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_size(size: int, source: str) -> None:
    """Refuse a file over MAX_BYTES before reading it."""
    if size > MAX_BYTES:
        raise SpecError([Problem("", f"the file is {size / 1024:,.0f} KiB; a spec or globals file is at most "
                                     f"{MAX_BYTES // 1024} KiB. Is it the right file?")], source)


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of a file's bytes (a BOM is allowed); a SpecError naming the first bad byte otherwise."""
    check_size(len(data), source)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Problem("", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column}. "
                                     "Save the file as UTF-8")], source) from None


def parse(text: str, source: str) -> Any:
    """One YAML document, bounded as the module says; a SpecError naming the line otherwise."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise SpecError([Problem("", f"{len(text):,} characters of YAML; at most {MAX_BYTES // 1024} KiB is read")], source)
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise SpecError([Problem("", f"refused YAML: {_where(exc.mark)}{exc}")], source) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise SpecError([Problem("", f"invalid YAML: line {line}, column {column}: the control character U+{code:04X} "
                                     "is not allowed in YAML; remove it")], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = ": ".join(filter(None, [getattr(exc, "context", None), getattr(exc, "problem", None)]))
        problem = problem or str(exc).splitlines()[0]
        raise SpecError([Problem("", f"invalid YAML: {_where(mark)}{problem[:200]}")], source) from None
    except RecursionError:  # a bound above should have caught it; never a traceback
        raise SpecError([Problem("", f"refused YAML: nested too deeply (at most {MAX_DEPTH} levels)")], source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
