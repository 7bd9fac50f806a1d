"""Reading YAML into plain data while remembering where every part of it was written.

Lives here: the loader that builds dicts, lists and scalars itself so it can keep the
line and column of every key and value, the YAML 1.2 scalar rules (`no` and `on` stay
strings), duplicate keys, aliases that refer to themselves, and turning PyYAML's syntax
errors into a position and a message. Not here: what the data should look like (see
`schema`), interpolation and env files (`loader`, `envfiles`, `checks`), and formatting
problems into report lines (`report` does; this module only says where and what).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import MappingEndEvent, MappingStartEvent, SequenceEndEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from stackvisor.config.textfile import NUL

# A place in the document: mapping keys and list indexes from the top.
Loc = tuple[str | int, ...]

# Bounds that keep a hostile or broken file from eating the machine. An alias repeats
# what it names, so ten levels of ten aliases would expand to 10^10 values from a
# few hundred bytes: the values built are counted, aliases included. A stack of a
# thousand services has some tens of thousands; the limits are far above real files.
MAX_VALUES = 500_000
MAX_DEPTH = 100


class _TooBig(Exception):
    def __init__(self, mark: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


@dataclass(frozen=True)
class YamlProblem:
    """Something wrong at `line`:`column` (1-based); `path` is the field, () for the file."""

    line: int
    column: int
    path: Loc
    message: str


class _Resolver(Resolver):
    """YAML 1.2 scalars where 1.1 surprises people.

    With YAML 1.1, `restart: no` would be the boolean false and `on`/`yes` would be
    booleans too; Compose files mean the strings. Dates stay strings as well.
    """


_Resolver.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
    ]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass
class Document:
    """The plain data of a YAML file, and where each part of it was written."""

    data: Any
    values: dict[Loc, tuple[int, int]]
    keys: dict[Loc, tuple[int, int]]

    def locate(self, path: Loc, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of `path`, or of its nearest written ancestor.

        `key` asks for the position of the key itself (for unknown or duplicate
        fields) rather than of its value.
        """
        marks = self.keys if key else self.values
        for length in range(len(path), -1, -1):
            prefix = path[:length]
            if prefix in marks:
                return marks[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)


class _PyComposer(Reader, Scanner, Parser, Composer, _Resolver):
    """PyYAML's pure-Python parser: slower, and the one whose error messages people know."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver.__init__(self)


@functools.cache
def _c_composer_class() -> Any:
    """libyaml's parser, about ten times faster (PyYAML may be built without it). It
    composes nested blocks recursively in C, where too deep a document would crash the
    process rather than raise: the depth is checked first, on its flat stream of events."""
    from yaml import cyaml

    class CComposer(cyaml.CParser, _Resolver):  # type: ignore[misc, name-defined]
        def __init__(self, text: str) -> None:
            cyaml.CParser.__init__(self, text)  # type: ignore[attr-defined]
            _Resolver.__init__(self)

    return CComposer


def _c_composer(text: str) -> Any:
    return _c_composer_class()(text)


def _check_depth(events: Any) -> None:
    """Refuse a document nested deeper than `MAX_DEPTH`, from its flat stream of events
    (both parsers compose recursively: too deep a document would crash the C one and
    exhaust Python's stack in the other)."""
    depth = 0
    while events.check_event():
        event = events.get_event()
        if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                start = event.start_mark
                mark = (start.line + 1, start.column + 1) if start else (1, 1)
                raise _TooBig(mark, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
            depth -= 1


def _compose(text: str) -> Node | None:
    """The document's node graph (an alias is the node it names, not a copy yet)."""
    if yaml.__with_libyaml__:
        try:
            _check_depth(_c_composer(text))
            node: Node | None = _c_composer(text).get_single_node()
            return node
        except yaml.YAMLError:
            pass  # a broken document: the Python parser below words the error
    checker = _PyComposer(text)
    try:
        _check_depth(checker)
    finally:
        checker.dispose()
    composer = _PyComposer(text)
    try:
        return composer.get_single_node()
    finally:
        composer.dispose()


class _Loader(SafeConstructor, _Resolver):
    """Builds plain data from the node graph itself, to keep positions and catch duplicates."""

    def __init__(self) -> None:
        SafeConstructor.__init__(self)
        _Resolver.__init__(self)
        self.values: dict[Loc, tuple[int, int]] = {}
        self.keys: dict[Loc, tuple[int, int]] = {}
        self.problems: list[YamlProblem] = []
        self.checked: set[int] = set()
        self.built = 0
        self.merged = 0  # pairs that merge keys copied (counted before the copying)
        self.flattening: set[int] = set()

    def problem(self, node: Node, path: Loc, message: str) -> None:
        line, column = _mark(node)
        self.problems.append(YamlProblem(line, column, path, message))

    def flatten_mapping(self, node: MappingNode) -> None:
        """Fold merge keys (`<<: *defaults`) in, as YAML says, once it is known what that
        costs: merged mappings are copied into each one that merges them, so a few lines of
        merges of merges can ask for billions of pairs before a single value is built."""
        if id(node) in self.flattening:
            raise yaml.constructor.ConstructorError(None, None, "a merge refers to itself", node.start_mark)
        merge_tag = "tag:yaml.org,2002:merge"
        sources = [value for key, value in node.value if isinstance(key, ScalarNode) and key.tag == merge_tag]
        if not sources:
            return
        self.flattening.add(id(node))
        try:
            copied = 0
            for source in sources:
                for mapping in source.value if isinstance(source, SequenceNode) else [source]:
                    if isinstance(mapping, MappingNode):
                        self.flatten_mapping(mapping)
                        copied += len(mapping.value)
            self.merged += copied
            if self.merged > MAX_VALUES:
                raise _TooBig(
                    _mark(node),
                    f"the file expands to more than {MAX_VALUES:,} values (merge keys copy what they name)",
                )
            super().flatten_mapping(node)
        finally:
            self.flattening.discard(id(node))

    def build(self, node: Node, path: Loc, active: frozenset[int]) -> Any:
        self.built += 1
        if self.built > MAX_VALUES:
            raise _TooBig(
                _mark(node),
                f"the file expands to more than {MAX_VALUES:,} values (aliases repeat what they name)",
            )
        if len(path) > MAX_DEPTH:
            raise _TooBig(_mark(node), f"nested more than {MAX_DEPTH} levels deep")
        if id(node) in active:
            self.problem(node, path, "an alias refers to itself; expected a finite value")
            return None
        if isinstance(node, ScalarNode) and "\0" in node.value:
            self.problem(node, path, NUL)
            return None
        if isinstance(node, MappingNode):
            return self.build_mapping(node, path, active | {id(node)})
        if isinstance(node, SequenceNode):
            inner = active | {id(node)}
            out = []
            for index, item in enumerate(node.value):
                self.values[path + (index,)] = _mark(item)
                out.append(self.build(item, path + (index,), inner))
            return out
        try:
            return self.construct_object(node)
        except yaml.YAMLError as exc:
            self.problem(node, path, f"cannot read this value: {getattr(exc, 'problem', None) or exc}")
            return None

    def build_mapping(self, node: MappingNode, path: Loc, active: frozenset[int]) -> dict[str, Any]:
        # Duplicates are looked for among the keys written here, before merge keys
        # (`<<: *defaults`) are folded in: overriding a merged key is the point of them.
        # An anchored mapping is visited again through each alias; check it once.
        if id(node) not in self.checked:
            self.checked.add(id(node))
            seen: dict[str, Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key_node.value in seen:
                    first = seen[key_node.value].start_mark.line + 1
                    message = f"duplicate key (first written on line {first})"
                    self.problem(key_node, path + (key_node.value,), message)
                else:
                    seen[key_node.value] = key_node
        try:
            self.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.problem(node, path, f"cannot merge: {getattr(exc, 'problem', None) or exc}")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "expected a plain key, not a list or mapping")
                continue
            # The key as written: `1:` names the service "1", and `on:` stays "on".
            key = key_node.value
            if "\0" in key:
                self.problem(key_node, path, NUL)
                continue
            child = path + (key,)
            self.keys[child] = _mark(key_node)
            # Nothing written: a plain empty scalar (style None, or "" from libyaml).
            empty = isinstance(value_node, ScalarNode) and value_node.value == "" and not value_node.style
            scalar = isinstance(value_node, ScalarNode) and not empty
            # A scalar is pointed at where it is written; a nested block (or nothing)
            # at its key, which is where the reader looks for it.
            self.values[child] = _mark(value_node) if scalar else _mark(key_node)
            out[key] = self.build(value_node, child, active)
        return out


def _mark(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def parse_yaml(text: str) -> tuple[Document | None, list[YamlProblem]]:
    """The document with its positions, and every problem found while reading it.

    The document is None when the text is not YAML or its top level is not a mapping;
    the problems then say why. Otherwise they are the problems within the data
    (duplicate keys, unreadable values, bad merges), in the order they were met.
    """
    loader = _Loader()
    try:
        root = _compose(text)
        if root is None:
            return None, [YamlProblem(1, 1, (), "the file is empty; expected a mapping with services")]
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else "a single value"
            line, column = _mark(root)
            message = f"expected a mapping with services at the top level (got {kind})"
            return None, [YamlProblem(line, column, (), message)]
        loader.values[()] = _mark(root)
        data = loader.build(root, (), frozenset())
    except _TooBig as exc:
        line, column = exc.mark
        return None, [YamlProblem(line, column, (), f"refused: {exc.message}")]
    except RecursionError:
        # The Python parser composes nested blocks recursively (libyaml's depth is checked
        # first): past what it can read, and past the limit.
        return None, [YamlProblem(1, 1, (), f"refused: nested more than {MAX_DEPTH} levels deep")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        detail = exc.problem or str(exc)
        if exc.context:
            detail = f"{detail} ({exc.context})"
        return None, [YamlProblem(line, column, (), f"invalid YAML: {detail}")]
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        message = f"invalid YAML: {exc.reason} (character U+{exc.character:04X})"
        return None, [YamlProblem(line, column, (), message)]
    except yaml.YAMLError as exc:
        return None, [YamlProblem(1, 1, (), f"invalid YAML: {exc}")]
    return Document(data, loader.values, loader.keys), loader.problems
