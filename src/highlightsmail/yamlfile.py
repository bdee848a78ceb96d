"""Reading an editor's YAML file into a pydantic model, with every problem at once,
each as `FILE:LINE:COL: message` (PRODUCT.md: "Every error names the file, line and
column, and all errors are reported at once. A bad file never produces a traceback.").

The file goes through these stages, each of which can only refuse with problems:

1. bytes: size cap, UTF-8 (a BOM is dropped), no control characters;
2. YAML nodes: safe loading only (libyaml when its marks work), a single document;
3. the node graph: a cap on its *expanded* size, so an alias bomb ("billion laughs")
   is refused before anything is expanded; a cap on nesting depth;
4. plain data (dicts, lists, scalars) built by walking the nodes, remembering the line
   and column of every key and value by its path, e.g. ("items", 3, "links", 0, "url");
   duplicate keys and tags that are not plain YAML are problems here;
5. the pydantic model; its errors are mapped back to those positions and reworded for
   an editor ("missing required key 'title'", "unknown key 'summry' (did you mean
   'summary'?)").
"""

from __future__ import annotations

import codecs
import difflib
import functools
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from highlightsmail.errors import HighlightsError, Problem, ValidationFailed, display_path

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "YamlDocument",
    "dotted",
    "load_model",
    "read_document",
    "validate_document",
]

#: An issue is ~10 KB; anything this big is a mistake (or an attack), not an issue.
MAX_BYTES = 2_000_000
#: Values after expanding aliases. 50 items of a dozen keys is ~1,000.
MAX_NODES = 100_000
#: Nesting levels; the issue format needs 5.
MAX_DEPTH = 100

M = TypeVar("M", bound=BaseModel)
KeyPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"
# Scalars whose implicit type may fail to construct (`date: 2024-13-45`, a 5,000-digit
# number): they fall back to their text and the model says what it expected.
_FALLBACK_TO_TEXT = {_TAG + "int", _TAG + "float", _TAG + "timestamp"}

# What YAML itself refuses to read (the YAML 1.1 printable set, as PyYAML's reader), so
# that a binary file gets one clear message, not the scanner's.
_NON_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# Extra words for a missing key, where the reason is not obvious.
_MISSING_HINTS = {"alt": "describe the image for readers who can't see it"}


# --------------------------------------------------------------------------- loaders


class _PySafeLoader(yaml.SafeLoader):
    """Pure-Python safe loader (a subclass, so nothing global is ever changed)."""


_CSafeBase = getattr(yaml, "CSafeLoader", None)
if _CSafeBase is not None:

    class _CSafeLoader(_CSafeBase):  # type: ignore[misc, valid-type]
        """libyaml's safe loader: the same safe constructors, several times faster."""

else:  # pragma: no cover - PyYAML built without libyaml
    _CSafeLoader = None  # type: ignore[assignment, misc]


def _marks_work(loader_class: type) -> bool:
    """Whether a loader reports the line and column (in characters) of every node."""
    try:
        loader = loader_class("a: [x, 日本, y]\nb:\n  - 1\n")
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
        y = root.value[0][1].value[2].start_mark
        one = root.value[1][1].value[0].start_mark
        return (y.line, y.column, one.line, one.column) == (0, 11, 2, 4)
    except Exception:
        return False


@functools.cache
def _loader_class() -> type:
    if _CSafeLoader is not None and _marks_work(_CSafeLoader):
        return _CSafeLoader
    return _PySafeLoader  # pragma: no cover - depends on the PyYAML build


# --------------------------------------------------------------------------- document


@dataclass
class YamlDocument:
    """A YAML file read into plain data, with the position of every key and value.

    `positions` and `key_positions` map a key path such as ("items", 3, "links", 0, "url")
    to a 1-based (line, column): of the value, and of the key for mapping entries.
    `problems` holds what was wrong but did not stop the reading (duplicate keys, tags
    that are not plain YAML); `validate_document` reports them with the model's.
    """

    file: str
    data: dict[str, Any]
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    raw: dict[KeyPath, str] = field(default_factory=dict)  # plain scalars YAML typed (yes, 12, ~)
    problems: list[Problem] = field(default_factory=list)
    unreadable: set[KeyPath] = field(default_factory=set)  # values replaced by None, with a problem

    def resolve(self, loc: Sequence[Any]) -> KeyPath:
        """The longest part of a (pydantic) location that is a path in the file; entries
        that are not keys (a union member's name, 'function-after[...]') are skipped."""
        path: KeyPath = ()
        for part in loc:
            candidate = (*path, part)
            if candidate in self.positions or candidate in self.key_positions:
                path = candidate
        return path

    def where(self, loc: Sequence[Any], *, key: bool = False) -> tuple[int, int]:
        """(line, column) of the value at `loc` (or of its key, with key=True); for a
        location that is not in the file, its nearest enclosing value."""
        path = self.resolve(loc)
        if key and path in self.key_positions:
            return self.key_positions[path]
        return self.positions.get(path, (1, 1))

    def problem(self, loc: Sequence[Any], message: str, severity: str = "error", *, key: bool = False) -> Problem:
        """A Problem at `loc`, its message prefixed with the dotted key path."""
        line, col = self.where(loc, key=key)
        prefix = dotted(tuple(loc)) if loc else ""
        text = f"{prefix}: {message}" if prefix else message
        return Problem(self.file, line, col, text, severity)  # type: ignore[arg-type]


def dotted(path: Sequence[Any]) -> str:
    """("items", 3, "links", 0, "url") -> "items[3].links[0].url"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --------------------------------------------------------------------------- public API


def load_model(path: Path, model: type[M]) -> M:
    """Read a YAML file and validate it into `model`.

    Raises ValidationFailed with every problem found, each `FILE:LINE:COL: message`, or
    HighlightsError when the file cannot be read at all. Never anything else for any
    file content.
    """
    return validate_document(read_document(path, model), model)


def read_document(path: Path, model: type[BaseModel] | None = None) -> YamlDocument:
    """Read a YAML file into a YamlDocument; raise ValidationFailed when it is not a
    readable YAML mapping (`model`, when given, only improves the messages)."""
    file = display_path(path)
    text = _read_text(Path(path), file)
    return _Reader(file, text, model).read()


def validate_document(doc: YamlDocument, model: type[M]) -> M:
    """Validate a document's data into `model`; raise ValidationFailed with the
    document's own problems and the model's, sorted by position."""
    problems = list(doc.problems)
    data = dict(doc.data)
    problems += _check_key_names(doc, data, model, ())
    result: M | None = None
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if doc.resolve(error["loc"]) not in doc.unreadable:  # already said why
                problems.append(_problem_from_error(doc, model, error))
    if problems:
        problems = _unique_sorted(problems)
        raise ValidationFailed(problems)
    assert result is not None
    return result


# --------------------------------------------------------------------------- bytes -> text


def _fail(file: str, line: int, col: int, message: str) -> ValidationFailed:
    return ValidationFailed([Problem(file, line, col, message)])


def _read_text(path: Path, file: str) -> str:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise HighlightsError(f"{file}: cannot read the file ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise _fail(file, 1, 1, f"the file is over {MAX_BYTES // 1_000_000} MB; is it the right file?")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    raw = raw[bom:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        col = len(raw[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise _fail(
            file,
            line,
            col,
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start + bom}); save the file as UTF-8",
        ) from None
    if not text.strip():
        raise _fail(file, 1, 1, "the file is empty")
    bad = _NON_PRINTABLE.search(text)
    if bad:
        count = len(_NON_PRINTABLE.findall(text))
        line, col = _text_position(text, bad.start())
        what = f"control character U+{ord(bad.group()):04X} is not allowed"
        if bad.group() == "\x00":
            what += " (is this a binary file?)"
        if count > 1:
            what += f"; {count - 1} more in the file"
        raise _fail(file, line, col, what)
    return text


def _text_position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _mark(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _file_keys(model: type[BaseModel]) -> list[str]:
    """The keys a file may use for `model`: aliases (`from`), not Python names, and not
    fields excluded from serialisation (set by the program, like an issue's slug)."""
    return [info.alias or name for name, info in model.model_fields.items() if not info.exclude]


# --------------------------------------------------------------------------- text -> data


class _Refused(Exception):
    def __init__(self, message: str, node: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


class _Reader:
    def __init__(self, file: str, text: str, model: type[BaseModel] | None) -> None:
        self.file = file
        self.text = text
        self.model = model
        self.doc = YamlDocument(file, {})
        self._loader: Any = None
        self._mappings_seen: set[int] = set()
        self._alias_at: tuple[int, int] | None = None

    def read(self) -> YamlDocument:
        try:
            self._scan()
            root = self._compose()
        except yaml.MarkedYAMLError as exc:
            line, col = _mark(exc.problem_mark or exc.context_mark)
            raise _fail(self.file, line, col, _yaml_message(exc, self.text)) from None
        except RecursionError:  # the pure-Python composer on deep nesting
            raise _fail(self.file, 1, 1, f"the file is nested more than {MAX_DEPTH} levels deep") from None
        except yaml.YAMLError as exc:
            raise _fail(self.file, 1, 1, f"not valid YAML: {exc}") from None
        self._check_size(root)
        if not (isinstance(root, yaml.MappingNode) and root.tag == _MAP):
            if isinstance(root, yaml.ScalarNode) and root.tag == _TAG + "null" and root.value == "":
                raise _fail(self.file, 1, 1, "the file is empty")
            keys = ", ".join(f"{k}:" for k in _file_keys(self.model)[:2]) + ", ..." if self.model else "key: value"
            line, col = _mark(root.start_mark)
            raise _fail(self.file, line, col, f"the top level must be a mapping of keys ({keys})")
        self.doc.data = self._build(root, (), 0)
        return self.doc

    def _scan(self) -> None:
        """A first pass over the parser's events, which hold no aliased copies: refuse a
        file with too many values before building any of them (composing a 2 MB list
        of numbers costs seconds), and note where the first alias is."""
        loader = _loader_class()(self.text)
        try:
            values = 0
            while loader.check_event():
                event = loader.get_event()
                if isinstance(event, yaml.AliasEvent):
                    if self._alias_at is None:
                        self._alias_at = _mark(event.start_mark)
                elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                    values += 1
                    if values > MAX_NODES:
                        line, col = _mark(event.start_mark)
                        raise _fail(
                            self.file, line, col, f"the file has more than {MAX_NODES:,} values; is it the right file?"
                        )
        finally:
            loader.dispose()

    def _compose(self) -> Any:
        self._loader = _loader_class()(self.text)
        try:
            root = self._loader.get_single_node()
        finally:
            self._loader.dispose()  # the constructor, used for scalars below, needs no parser
        if root is None:  # nothing but comments and blank lines
            raise _fail(self.file, 1, 1, "the file is empty")
        return root

    # -- alias bombs and deep nesting, before anything is expanded

    def _check_size(self, root: Any) -> None:
        """Refuse a node graph whose expansion (aliases copied out) is too big, too deep
        or infinite. Memoised on node identity, so it costs one visit per node in the
        file, however many times aliases repeat it."""
        sizes: dict[int, int] = {}
        open_nodes: set[int] = set()

        def size(node: Any, depth: int) -> int:
            ident = id(node)
            known = sizes.get(ident)
            if known is not None:
                return known
            if ident in open_nodes:
                raise _Refused("an alias refers to the value that contains it, which never ends")
            if depth > MAX_DEPTH:
                raise _Refused(f"the file is nested more than {MAX_DEPTH} levels deep", node)
            total = 1
            if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
                open_nodes.add(ident)
                children = (
                    node.value if isinstance(node, yaml.SequenceNode) else (n for pair in node.value for n in pair)
                )
                for child in children:
                    total += size(child, depth + 1)
                    if total > MAX_NODES:
                        raise _Refused(
                            f"the aliases in this file expand to more than {MAX_NODES:,} values; "
                            "refusing to load it (an alias bomb?)"
                        )
                open_nodes.discard(ident)
            sizes[ident] = total
            return total

        try:
            size(root, 0)
        except _Refused as exc:
            if exc.node is not None:
                line, col = _mark(exc.node.start_mark)
            else:
                line, col = self._alias_at or (1, 1)
            raise _fail(self.file, line, col, exc.message) from None

    # -- nodes -> data, with positions

    def _problem(self, node: Any, message: str) -> None:
        line, col = _mark(node.start_mark)
        self.doc.problems.append(Problem(self.file, line, col, message))

    def _unreadable(self, node: Any, path: KeyPath, message: str) -> None:
        self._problem(node, f"{_where(path)}{message}")
        self.doc.unreadable.add(path)

    def _build(self, node: Any, path: KeyPath, depth: int) -> Any:
        self.doc.positions[path] = _mark(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self._unreadable(node, path, f"unsupported YAML tag {_short_tag(node.tag)}; write a plain list")
                return None
            return [self._build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        if node.tag != _MAP:
            self._unreadable(node, path, f"unsupported YAML tag {_short_tag(node.tag)}; write a plain mapping")
            return None
        return self._mapping(node, path, depth)

    def _scalar(self, node: Any, path: KeyPath) -> Any:
        try:
            value = self._loader.construct_object(node)
        except ValueError:
            if node.tag not in _FALLBACK_TO_TEXT:
                self._unreadable(node, path, f"cannot read {node.value!r} as {_short_tag(node.tag)}")
                return None
            value = node.value
        except yaml.YAMLError:  # ConstructorError: a tag the safe loader does not know
            self._unreadable(node, path, f"unsupported YAML tag {_short_tag(node.tag)}; write plain text")
            return None
        except Exception as exc:
            self._unreadable(node, path, f"cannot read {node.value!r}: {exc}")
            return None
        if not isinstance(value, str) and not node.style:  # plain, not quoted
            self.doc.raw[path] = node.value
        return value

    def _mapping(self, node: Any, path: KeyPath, depth: int) -> dict[str, Any]:
        # An aliased mapping is built once per place it is used; report its own
        # problems (duplicates, bad keys) once.
        first_visit = id(node) not in self._mappings_seen
        self._mappings_seen.add(id(node))
        result: dict[str, Any] = {}
        # YAML merge keys (`<<: *defaults`): explicit keys win over merged ones, and an
        # earlier merged mapping over a later one, so build them last to first.
        merges = [value for key, value in node.value if key.tag == _MERGE]
        for value_node in reversed(merges):
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in reversed(sources):
                if isinstance(source, yaml.MappingNode) and source.tag == _MAP:
                    result.update(self._mapping(source, path, depth))
                elif first_visit:
                    self._problem(source, f"{_where(path)}'<<' merges a mapping or a list of mappings")
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                if first_visit:
                    self._problem(key_node, f"{_where(path)}a key must be plain text, not a list or mapping")
                continue
            # The key as written: `yes:` or `2024:` are the keys "yes" and "2024".
            key = key_node.value
            key_pos = _mark(key_node.start_mark)
            if key in seen:
                if first_visit:
                    self._problem(key_node, f"{_where((*path, key))}duplicate key '{key}' (first at line {seen[key]})")
                continue
            seen[key] = key_pos[0]
            self.doc.key_positions[(*path, key)] = key_pos
            result[key] = self._build(value_node, (*path, key), depth + 1)
        self.doc.positions[path] = _mark(node.start_mark)
        return result


def _where(path: KeyPath) -> str:
    return f"{dotted(path)}: " if path else ""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def _yaml_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    """The parser's own words, short: problem, then what it was reading, then a hint for
    the usual mistakes."""
    problem = (exc.problem or "not valid YAML").strip()
    message = problem
    if exc.context:
        context = exc.context.strip()
        if problem.startswith("but "):  # "expected a single document ..." "but found another"
            message = f"{context}, {problem}"
        else:
            if (
                exc.context_mark is not None
                and exc.problem_mark is not None
                and exc.context_mark.line != exc.problem_mark.line
            ):
                context += f" at line {exc.context_mark.line + 1}"
            message = f"{problem} ({context})"
    mark = exc.problem_mark or exc.context_mark
    lines = text.splitlines()
    line = lines[mark.line] if mark is not None and 0 <= mark.line < len(lines) else ""
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if "\t" in indent or "tab" in problem:
        message += "; indent with spaces, not tabs"
    elif "mapping values are not allowed" in problem:
        message += "; put text that contains ': ' in quotes"
    elif "cannot start any token" in problem:
        message += "; put text that starts with @, ` or % in quotes"
    return message


# --------------------------------------------------------------------------- model walking


def _candidates(annotation: Any) -> list[Any]:
    """The types a value may take: Annotated unwrapped, unions split, None dropped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _candidates(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in get_args(annotation):
            if arg is not type(None):
                out += _candidates(arg)
        return out
    return [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def _step(annotation: Any, key: str | int) -> tuple[Any, FieldInfo | None] | None:
    """The annotation (and field, if any) one key or index below `annotation`."""
    for tp in _candidates(annotation):
        if _is_model(tp):
            if isinstance(key, str) and (info := _field(tp, key)) is not None:
                return info.annotation, info
            continue
        origin, args = get_origin(tp), get_args(tp)
        if isinstance(key, int) and isinstance(origin, type) and issubclass(origin, (list, tuple, set, frozenset)):
            return (args[0] if args else Any), None
        if isinstance(key, str) and isinstance(origin, type) and issubclass(origin, Mapping):
            return (args[1] if len(args) == 2 else Any), None
    return None


def _walk(model: type[BaseModel], path: KeyPath) -> tuple[Any, FieldInfo | None] | None:
    annotation: Any = model
    info: FieldInfo | None = None
    for part in path:
        stepped = _step(annotation, part)
        if stepped is None:
            return None
        annotation, info = stepped
    return annotation, info


def _model_at(model: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    found = _walk(model, path)
    if found is None:
        return None
    return next((tp for tp in _candidates(found[0]) if _is_model(tp)), None)


def _length_bounds(model: type[BaseModel], path: KeyPath) -> tuple[int | None, int | None]:
    found = _walk(model, path)
    low = high = None
    if found is not None and found[1] is not None:
        for meta in found[1].metadata:
            low = getattr(meta, "min_length", low)
            high = getattr(meta, "max_length", high)
    return low, high


def _check_key_names(doc: YamlDocument, data: dict[str, Any], model: type[BaseModel], path: KeyPath) -> list[Problem]:
    """Keys pydantic would accept but a file must not use: a Python name where the file
    key is an alias (`from_` for `from`), a field the program sets (`slug`). Removes them
    from `data` (a copy at each level it changes) and returns their problems."""
    problems: list[Problem] = []
    allowed = _file_keys(model)
    for key in list(data):
        info = _field(model, key)
        if info is None:
            named = model.model_fields.get(key)
            if named is not None:  # a Python name, reachable through populate_by_name
                problems.append(doc.problem((*path, key), _unknown_key(key, allowed), key=True))
                del data[key]
            continue
        if info.exclude:
            problems.append(doc.problem((*path, key), _unknown_key(key, allowed), key=True))
            del data[key]
            continue
        value = data[key]
        problems += _check_nested(doc, data, key, value, info.annotation, (*path, key))
    return problems


def _check_nested(
    doc: YamlDocument, parent: Any, slot: Any, value: Any, annotation: Any, path: KeyPath
) -> list[Problem]:
    problems: list[Problem] = []
    for tp in _candidates(annotation):
        if _is_model(tp) and isinstance(value, dict):
            copy = dict(value)
            problems += _check_key_names(doc, copy, tp, path)
            parent[slot] = copy
            break
        origin, args = get_origin(tp), get_args(tp)
        if origin is list and args and isinstance(value, list) and any(_is_model(a) for a in _candidates(args[0])):
            copy_list = list(value)
            for i, element in enumerate(copy_list):
                problems += _check_nested(doc, copy_list, i, element, args[0], (*path, i))
            parent[slot] = copy_list
            break
    return problems


# --------------------------------------------------------------------------- pydantic errors -> words


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    if allowed:
        return f"unknown key '{key}' (allowed here: {', '.join(allowed)})"
    return f"unknown key '{key}'"


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _entries(low: int | None, high: int | None, has: int) -> str:
    def plural(n: int) -> str:
        return f"{n} entr{'y' if n == 1 else 'ies'}"

    if low is not None and high is not None:
        return f"needs {low} to {high} entries (has {has})"
    if low is not None:
        return f"needs at least {plural(low)} (has {has})"
    return f"has {plural(has)}, at most {high}"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return ""


def _expected_text(doc: YamlDocument, path: KeyPath, value: Any) -> str:
    if value is None:
        return "expected text, but there is nothing after the colon"
    kind = _kind(value)
    if kind:
        return f"expected text, not {kind}"
    raw = doc.raw.get(path)
    if raw is not None:  # YAML read `yes`, `off`, `2024-01-12`... as something else
        return f'expected text; write "{raw}" in quotes to mean it as text'
    return "expected text"


def _problem_from_error(doc: YamlDocument, model: type[BaseModel], error: Any) -> Problem:
    kind: str = error["type"]
    loc: tuple[Any, ...] = tuple(error["loc"])
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    path = doc.resolve(loc)

    if kind == "missing":
        key = str(loc[-1]) if loc else "?"
        message = f"missing required key '{key}'"
        if key in _MISSING_HINTS:
            message += f" ({_MISSING_HINTS[key]})"
        line, col = doc.positions.get(path, (1, 1))
        return Problem(doc.file, line, col, f"{dotted((*path, key))}: {message}")

    if kind == "extra_forbidden":
        key = str(path[-1]) if path else str(loc[-1])
        parent = _model_at(model, path[:-1])
        message = _unknown_key(key, _file_keys(parent) if parent else [])
        return doc.problem(path, message, key=True)

    message: str
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    elif kind.startswith("date") and not kind.startswith("datetime"):
        message = "expected a date like 2024-01-12"
        reason = ctx.get("error")
        if isinstance(value, str) and reason:
            message += f" ({reason})"
    elif kind.startswith("datetime"):
        message = "expected a date and time like 2024-01-12 09:30"
    elif kind in ("list_type", "tuple_type", "set_type", "iterable_type"):
        message = "expected a list" + (
            " (like [a, b], or one entry per line starting with '- ')" if isinstance(value, str) else ""
        )
    elif kind == "string_type":
        message = _expected_text(doc, path, value)
    elif kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        message = "expected a whole number"
    elif kind in ("float_type", "float_parsing", "decimal_type", "decimal_parsing"):
        message = "expected a number"
    elif kind in ("bool_type", "bool_parsing"):
        message = "expected true or false"
    elif kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        nested = _model_at(model, path)
        keys = _file_keys(nested) if nested else []
        message = "expected a mapping" + (
            f" of keys ({', '.join(f'{k}:' for k in keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""
        )
    elif kind in ("string_too_long", "string_too_short", "too_long", "too_short") and isinstance(value, str):
        limit = ctx.get("max_length") if "long" in kind else ctx.get("min_length")
        if "long" in kind:
            message = f"is {len(value)} characters, at most {limit}"
        elif limit == 1:
            message = "must not be empty"
        else:
            message = f"is {len(value)} characters, at least {limit}"
    elif kind in ("too_long", "too_short"):
        low, high = _length_bounds(model, path)
        low = low if low is not None else ctx.get("min_length")
        high = high if high is not None else ctx.get("max_length")
        has = ctx.get("actual_length")
        if has is None:
            has = len(value) if isinstance(value, (list, dict, str)) else 0
        message = _entries(low, high, has)
    elif kind == "literal_error":
        message = f"must be one of {ctx.get('expected', '')}"
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), options, n=1) if isinstance(value, str) else []
        if close:
            message += f" (did you mean '{close[0]}'?)"
    elif kind == "greater_than_equal":
        message = f"must be at least {_num(ctx.get('ge'))}"
    elif kind == "less_than_equal":
        message = f"must be at most {_num(ctx.get('le'))}"
    elif kind == "greater_than":
        message = f"must be more than {_num(ctx.get('gt'))}"
    elif kind == "less_than":
        message = f"must be less than {_num(ctx.get('lt'))}"
    else:
        text = str(error.get("msg") or kind)
        message = text[:1].lower() + text[1:]
    return doc.problem(path, message)


def _unique_sorted(problems: list[Problem]) -> list[Problem]:
    """One line per problem (a union reports a failure once per member), by position."""
    seen: set[str] = set()
    unique = []
    for problem in problems:
        if str(problem) not in seen:
            seen.add(str(problem))
            unique.append(problem)
    return sorted(unique, key=lambda p: (p.line, p.col))
