"""Pydantic's validation errors in an editor's words, each placed at FILE:LINE:COL.

A model's errors come with a location such as ("items", 3, "links", 0, "url") and a type
("missing", "string_too_long", ...). The words for each type are in one table below;
where they need the model (which keys a mapping takes, how many entries a list may
have), the model is walked along the location.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from highlightsmail.authoring.sourcemap import KeyPath, YamlDocument
from highlightsmail.errors import Problem

# Extra words for a missing key, where the reason is not obvious.
_MISSING_HINTS = {"alt": "describe the image for readers who can't see it"}


def file_keys(model: type[BaseModel]) -> list[str]:
    """The keys a file may use for `model`: aliases (`from`), not Python names, and not
    fields excluded from serialisation (set by the program, like an issue's slug)."""
    return [info.alias or name for name, info in model.model_fields.items() if not info.exclude]


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


def check_key_names(doc: YamlDocument, data: dict[str, Any], model: type[BaseModel], path: KeyPath) -> list[Problem]:
    """Keys pydantic would accept but a file must not use: a Python name where the file
    key is an alias (`from_` for `from`), a field the program sets (`slug`). Removes them
    from `data` (a copy at each level it changes) and returns their problems."""
    problems: list[Problem] = []
    allowed = file_keys(model)
    for key in list(data):
        info = _field(model, key)
        if info is None:
            named = model.model_fields.get(key)
            if named is not None:  # a Python name, reachable through populate_by_name
                problems.append(doc.problem((*path, key), unknown_key(key, allowed), key=True))
                del data[key]
            continue
        if info.exclude:
            problems.append(doc.problem((*path, key), unknown_key(key, allowed), key=True))
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
            problems += check_key_names(doc, copy, tp, path)
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


def unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{key}' (did you mean '{close[0]}'?)"
    if allowed:
        return f"unknown key '{key}' (allowed here: {', '.join(allowed)})"
    return f"unknown key '{key}'"


@dataclass(frozen=True)
class _Error:
    """One pydantic error, with what the wording needs: the file's data and the model."""

    doc: YamlDocument
    model: type[BaseModel]
    kind: str
    loc: tuple[Any, ...]
    path: KeyPath  # the part of `loc` that is a place in the file
    ctx: dict[str, Any]
    value: Any
    msg: str


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


def _missing(e: _Error) -> str:
    key = str(e.loc[-1]) if e.loc else "?"
    hint = _MISSING_HINTS.get(key)
    return f"missing required key '{key}'" + (f" ({hint})" if hint else "")


def _extra(e: _Error) -> str:
    key = str(e.path[-1]) if e.path else str(e.loc[-1])
    parent = _model_at(e.model, e.path[:-1])
    return unknown_key(key, file_keys(parent) if parent else [])


def _own_words(e: _Error) -> str:
    """A validator's own ValueError: its message is already an editor's sentence."""
    return str(e.ctx["error"]) if "error" in e.ctx else _pydantic_words(e)


def _date(e: _Error) -> str:
    reason = e.ctx.get("error")
    return "expected a date like 2024-01-12" + (f" ({reason})" if isinstance(e.value, str) and reason else "")


def _datetime(e: _Error) -> str:
    return "expected a date and time like 2024-01-12 09:30"


def _list(e: _Error) -> str:
    hint = " (like [a, b], or one entry per line starting with '- ')" if isinstance(e.value, str) else ""
    return "expected a list" + hint


def _text(e: _Error) -> str:
    if e.value is None:
        return "expected text, but there is nothing after the colon"
    kind = _kind(e.value)
    if kind:
        return f"expected text, not {kind}"
    raw = e.doc.raw.get(e.path)
    if raw is not None:  # YAML read `yes`, `off`, `2024-01-12`... as something else
        return f'expected text; write "{raw}" in quotes to mean it as text'
    return "expected text"


def _mapping(e: _Error) -> str:
    nested = _model_at(e.model, e.path)
    keys = file_keys(nested) if nested else []
    if not keys:
        return "expected a mapping"
    return f"expected a mapping of keys ({', '.join(f'{k}:' for k in keys[:3])}{', ...' if len(keys) > 3 else ''})"


def _length(e: _Error) -> str:
    """Too long or too short: characters for text, entries for a list."""
    if isinstance(e.value, str):
        if "long" in e.kind:
            return f"is {len(e.value)} characters, at most {e.ctx.get('max_length')}"
        low = e.ctx.get("min_length")
        return "must not be empty" if low == 1 else f"is {len(e.value)} characters, at least {low}"
    low, high = _length_bounds(e.model, e.path)
    low = low if low is not None else e.ctx.get("min_length")
    high = high if high is not None else e.ctx.get("max_length")
    has = e.ctx.get("actual_length")
    if has is None:
        has = len(e.value) if isinstance(e.value, (list, dict)) else 0
    return _entries(low, high, has)


def _literal(e: _Error) -> str:
    expected = str(e.ctx.get("expected", ""))
    options = re.findall(r"'([^']*)'", expected)
    close = difflib.get_close_matches(str(e.value), options, n=1) if isinstance(e.value, str) else []
    return f"must be one of {expected}" + (f" (did you mean '{close[0]}'?)" if close else "")


def _bound(words: str, ctx_key: str) -> Callable[[_Error], str]:
    return lambda e: f"{words} {_num(e.ctx.get(ctx_key))}"


def _fixed(words: str) -> Callable[[_Error], str]:
    return lambda e: words


def _pydantic_words(e: _Error) -> str:
    """pydantic's own message, as the rest of a sentence."""
    text = e.msg or e.kind
    return text[:1].lower() + text[1:]


def _table(*entries: tuple[tuple[str, ...], Callable[[_Error], str]]) -> dict[str, Callable[[_Error], str]]:
    return {kind: words for kinds, words in entries for kind in kinds}


#: pydantic error type -> the words for it. Types not here keep pydantic's message;
#: date and datetime types not listed are found by their prefix (see _words_for).
_WORDS = _table(
    (("missing",), _missing),
    (("extra_forbidden",), _extra),
    (("value_error", "assertion_error"), _own_words),
    (("list_type", "tuple_type", "set_type", "iterable_type"), _list),
    (("string_type",), _text),
    (("int_type", "int_parsing", "int_from_float", "int_parsing_size"), _fixed("expected a whole number")),
    (("float_type", "float_parsing", "decimal_type", "decimal_parsing"), _fixed("expected a number")),
    (("bool_type", "bool_parsing"), _fixed("expected true or false")),
    (("model_type", "model_attributes_type", "dict_type", "mapping_type"), _mapping),
    (("string_too_long", "string_too_short", "too_long", "too_short"), _length),
    (("literal_error",), _literal),
    (("greater_than_equal",), _bound("must be at least", "ge")),
    (("less_than_equal",), _bound("must be at most", "le")),
    (("greater_than",), _bound("must be more than", "gt")),
    (("less_than",), _bound("must be less than", "lt")),
)


def _words_for(kind: str) -> Callable[[_Error], str]:
    if kind in _WORDS:
        return _WORDS[kind]
    if kind.startswith("datetime"):
        return _datetime
    if kind.startswith("date"):
        return _date
    return _pydantic_words


def problem_from_error(doc: YamlDocument, model: type[BaseModel], error: Any) -> Problem:
    """One pydantic error (an item of `ValidationError.errors()`) as a Problem in the file."""
    loc = tuple(error["loc"])
    e = _Error(
        doc=doc,
        model=model,
        kind=error["type"],
        loc=loc,
        path=doc.resolve(loc),
        ctx=error.get("ctx") or {},
        value=error.get("input"),
        msg=str(error.get("msg") or ""),
    )
    message = _words_for(e.kind)(e)
    if e.kind == "missing":  # not in the file: at the mapping that lacks it
        return doc.problem((*e.path, str(loc[-1]) if loc else "?"), message)
    return doc.problem(e.path, message, key=e.kind == "extra_forbidden")


__all__ = ["check_key_names", "file_keys", "problem_from_error", "unknown_key"]
