"""Reading a YAML file a person hands us (the config file, a catalog) in bounded time and memory.

One job: a path -> plain data (dicts, lists, scalars), or a `YamlFileError` whose one-line
message says what is wrong and on which line; the caller names the file.

Decisions:
- PyYAML's `SafeLoader` (no Python tags), with the refusals it lacks:
  - a key twice in one mapping: PyYAML silently keeps the last, which hides a typo'd override
    (`dry_run: false` further down a file undoing the first);
  - aliases whose expansion exceeds `MAX_NODES` nodes or `MAX_DEPTH` levels, and an alias inside
    the node it names. PyYAML shares an aliased node instead of copying it, but everything
    downstream (pydantic, the settings layers, merge keys) walks the expanded tree: a "billion
    laughs" of a few hundred bytes took 32 s and 1.6 GB. The bound is computed on the composed
    node graph (each node once), before any Python object exists;
  - nesting deeper than `MAX_DEPTH` while composing (PyYAML recurses: no `RecursionError`);
  - a file over `MAX_BYTES`, or not UTF-8 (the line of the first bad byte is named).
- A constructor's `ValueError` (a 5000-digit integer, the 13th month of a timestamp) is a
  `YamlFileError` too, not a traceback.
- Parsed by libyaml (PyYAML's `CSafeLoader`) when PyYAML has it: the default catalog takes
  ~2 ms there against ~20 ms in the pure-Python parser, on every start of a command. The same
  constructor (duplicate keys, scalar values) and expansion check run on its nodes. libyaml's
  composer recurses in C, so the document's events are walked first (iteratively) and a
  document nested past `MAX_DEPTH` never reaches it. Whatever the fast path refuses or fails
  on, and any text with a character the pure-Python reader refuses, is read again by the
  pure-Python loader, whose one-line message is the one given: the messages do not depend on
  whether libyaml is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import CollectionEndEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YamlFileError", "read_yaml_file"]

#: Largest file read (a config file with a whole catalog is a few hundred KiB).
MAX_BYTES = 16 << 20
#: Deepest nesting, aliases expanded (the catalog nests about 6 levels).
MAX_DEPTH = 64
#: Most nodes of the document, aliases expanded.
MAX_NODES = 100_000

_MERGE = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """A file that is not acceptable YAML; the message is one line (`... at line N: ...`)."""


class _NoDuplicateKeys(yaml.constructor.SafeConstructor):
    """The safe constructor, refusing a key twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                    continue  # merged keys may be overridden; complex keys: PyYAML refuses
                key = self.construct_object(key_node)
                first = seen.setdefault(key, key_node)
                if first is not key_node:
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


class _Loader(_NoDuplicateKeys, yaml.SafeLoader):
    """`SafeLoader` that refuses duplicate keys and nesting past `MAX_DEPTH` while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                problem = f"nested deeper than {MAX_DEPTH} levels"
                raise ComposerError(None, None, problem, mark)
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _check_expansion(root: Node) -> None:
    """Refuse a graph whose expansion is bigger than `MAX_NODES` or deeper than `MAX_DEPTH`."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height), each node walked once
    open_: set[int] = set()

    def refuse(node: Node, problem: str) -> YamlFileError:
        return YamlFileError(f"invalid YAML at line {node.start_mark.line + 1}: {problem}")

    def walk(node: Node, level: int) -> int:
        key = id(node)
        if key in done:
            nodes, height = done[key]
            if level + height > MAX_DEPTH:
                raise refuse(node, f"aliases nest deeper than {MAX_DEPTH} levels")
            return nodes
        if key in open_:
            raise refuse(node, "an alias refers to a node that contains it")
        if level > MAX_DEPTH:
            raise refuse(node, f"aliases nest deeper than {MAX_DEPTH} levels")
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        open_.add(key)
        nodes, height = 1, 0
        for child in children:
            nodes += walk(child, level + 1)
            height = max(height, done[id(child)][1] + 1)
            if nodes > MAX_NODES:
                raise refuse(node, f"aliases expand to more than {MAX_NODES} nodes")
        open_.discard(key)
        done[key] = (nodes, height)
        return nodes

    walk(root, 1)


_CLoaderBase: Any = getattr(yaml, "CSafeLoader", None)  # None: PyYAML without libyaml


class _UnsureError(Exception):
    """The fast path leaves this document to the pure-Python loader."""


def _read_fast(text: str) -> Any:
    """The document, by libyaml; raises `_UnsureError` for anything else than a clean read."""
    if _CLoaderBase is None or yaml.reader.Reader.NON_PRINTABLE.search(text):
        raise _UnsureError
    try:
        depth = 0  # counted as the pure-Python loader's `compose_node` counts it
        for event in yaml.parse(text, Loader=_CLoaderBase):
            if isinstance(event, CollectionEndEvent):
                depth -= 1
            elif isinstance(event, NodeEvent):
                if depth + 1 > MAX_DEPTH:
                    raise _UnsureError
                if isinstance(event, CollectionStartEvent):
                    depth += 1
        loader = _CLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except Exception:  # the pure-Python loader reads it again and says why
        raise _UnsureError from None


if _CLoaderBase is not None:

    class _CLoader(_NoDuplicateKeys, _CLoaderBase):  # type: ignore[misc]
        """libyaml's parser and composer, our constructor (duplicate keys refused)."""

        def __init__(self, stream: str) -> None:
            _CLoaderBase.__init__(self, stream)


def read_yaml_file(path: Path) -> Any:
    """The document in `path` as plain data (None when empty); raises OSError, YamlFileError."""
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlFileError(f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise YamlFileError(f"not UTF-8 at line {line} (byte 0x{data[e.start]:02x})") from None
    try:
        return _read_fast(text)
    except _UnsureError:
        pass
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks the characters first
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except YamlFileError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        said = ", ".join(str(x) for x in (e.context, e.problem) if x) or type(e).__name__
        problem = " ".join(said.split())
        raise YamlFileError(f"invalid YAML{where}: {problem}") from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise YamlFileError(
            f"invalid YAML at line {line}: {' '.join(str(e.reason).split())}"
        ) from None
    except yaml.YAMLError as e:
        raise YamlFileError(f"invalid YAML: {type(e).__name__}") from None
    except (ValueError, OverflowError) as e:  # from a scalar's constructor
        raise YamlFileError(f"invalid YAML: {' '.join(str(e).split())[:200]}") from None
    finally:
        if loader is not None:
            loader.dispose()
