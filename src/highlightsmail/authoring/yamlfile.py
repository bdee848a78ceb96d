"""Reading an editor's YAML file into a pydantic model, with every problem at once,
each as `FILE:LINE:COL: message`. A bad file never produces a traceback.

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
   'summary'?)") by `highlightsmail.modelerrors`.
"""

from __future__ import annotations

import codecs
import functools
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from highlightsmail.authoring.modelerrors import check_key_names, file_keys, problem_from_error
from highlightsmail.authoring.sourcemap import KeyPath, SourceMap, YamlDocument, dotted
from highlightsmail.errors import HighlightsError, Problem, ValidationFailed, display_path

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "load_model",
    "load_model_located",
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

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"
# Scalars whose implicit type may fail to construct (`date: 2024-13-45`, a 5,000-digit
# number): they fall back to their text and the model says what it expected.
_FALLBACK_TO_TEXT = {_TAG + "int", _TAG + "float", _TAG + "timestamp"}

# What YAML itself refuses to read (the YAML 1.1 printable set, as PyYAML's reader), so
# that a binary file gets one clear message, not the scanner's.
_NON_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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


# --------------------------------------------------------------------------- public API


def load_model(path: Path, model: type[M]) -> M:
    """Read a YAML file and validate it into `model`.

    Raises ValidationFailed with every problem found, each `FILE:LINE:COL: message`, or
    HighlightsError when the file cannot be read at all. Never anything else for any
    file content.
    """
    return load_model_located(path, model)[0]


def load_model_located(path: Path, model: type[M]) -> tuple[M, SourceMap]:
    """`load_model`, and where each value of the model is in the file."""
    doc = read_document(path, model)
    return validate_document(doc, model), doc.source_map()


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
    problems += check_key_names(doc, data, model, ())
    result: M | None = None
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if doc.resolve(error["loc"]) not in doc.unreadable:  # already said why
                problems.append(problem_from_error(doc, model, error))
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
        self.doc = YamlDocument(file, text)
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
            keys = ", ".join(f"{k}:" for k in file_keys(self.model)[:2]) + ", ..." if self.model else "key: value"
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
            if type(value) is int:
                return _IntAsWritten(value, node.value)
            if type(value) is float:
                return _FloatAsWritten(value, node.value)
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


class _IntAsWritten(int):
    """A number YAML read from a plain scalar that still reads as it was written: a
    text field given `title: 0x1F` or `1_000` gets that text, not `31` or `1000`. A
    number field (validated into a plain int) sees the number."""

    text: str

    def __new__(cls, value: int, text: str) -> _IntAsWritten:
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


class _FloatAsWritten(float):
    """As _IntAsWritten, for `title: 3.10` (not `3.1`) or `1e3` (not `1000.0`)."""

    text: str

    def __new__(cls, value: float, text: str) -> _FloatAsWritten:
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


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


def _unique_sorted(problems: list[Problem]) -> list[Problem]:
    """One line per problem (a union reports a failure once per member), by position."""
    seen: set[str] = set()
    unique = []
    for problem in problems:
        if str(problem) not in seen:
            seen.add(str(problem))
            unique.append(problem)
    return sorted(unique, key=lambda p: (p.line, p.col))
