"""Strict arguments, pure: a `tools/call`'s arguments checked against the tool's pinned
`inputSchema`, compiled once per reload.

The validator is `jsonschema` (the reference implementation for Python, already installed
with the MCP SDK), in the draft the schema declares (`$schema`) and 2020-12 when it names
none, as MCP says. Typing is JSON Schema's, which is strict JSON: `"500"` is not an
integer, a string is not an array, `1` and `0` are not booleans, `true` is not a number
(`1.0` is an integer: JSON Schema compares the value, not its spelling). `pattern` is read
as RE2 (`google-re2`: linear time on any argument) when RE2 can compile it, else by
Python's `re`, as jsonschema does.

The common shape of an MCP tool's schema (an object of `properties`, `required` and
`additionalProperties`, as the SDKs generate it) is checked member by member: only the
arguments a call carries are validated, each against its own compiled subschema (a bare
`type`, scalar keywords (`_Simple`: type, lengths, bounds, pattern, a string enum), or an
`anyOf` of such, without building a validator per call: `_judge`; any other keyword is
jsonschema's). A schema
with anything else at its top (`allOf`, `$ref`, `patternProperties`, `if`, ...) or a `$ref`
inside a property is validated whole. Both give the same answer; the first is several
times faster (`bench/inprocess.py`).

`ArgumentSchema.violation(arguments)` names the first violation as a JSON pointer into the
arguments and the schema keyword that failed, never the value: a denial shows the pointer
and the keyword only. The first is a missing required member, else the first member, in
the order the call gives them, that breaks the schema (on both paths).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import re2

__all__ = ["ArgumentSchema", "SchemaProblem", "Violation", "compile_schema"]

POINTER_SHOWN: Final = 200
"""Characters of a pointer a denial shows at most (keys are chosen by the caller)."""

_TOP_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "title",
        "description",
        "$schema",
        "$id",
        "$comment",
        "default",
        "examples",
        "$defs",
        "definitions",
    }
)
"""Keywords at the top of a schema the member-by-member path handles (or that assert
nothing)."""
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})
"""Keywords whose values are JSON data, not schemas."""


class SchemaProblem(ValueError):
    """The schema cannot be used to validate; `location` is inside the schema."""

    def __init__(self, location: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


@dataclass(frozen=True, slots=True)
class Violation:
    """The first way the arguments break the schema: where (a JSON pointer into the
    arguments, `""` for the arguments object itself) and which keyword."""

    pointer: str
    keyword: str

    def describe(self) -> str:
        """`/tags (type)`, with the pointer cut to `POINTER_SHOWN` characters."""
        where = self.pointer or "/"
        if len(where) > POINTER_SHOWN or not where.isprintable():
            where = repr(where[:POINTER_SHOWN]) + ("…" if len(where) > POINTER_SHOWN else "")
        return f"{where} ({self.keyword})"


def _pointer(parts: Iterator[str | int] | tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _re2_pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[jsonschema.exceptions.ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    if not _matches(pattern, instance):
        yield jsonschema.exceptions.ValidationError(f"does not match {pattern!r}")


_COMPILED: dict[str, Any] = {}


def _compiled(pattern: str) -> Any:
    found = _COMPILED.get(pattern)
    if found is None:
        try:
            options = re2.Options()
            options.log_errors = False
            found = re2.compile(pattern, options)
        except re2.error:
            found = re.compile(pattern)  # not RE2 syntax (a lookaround): as jsonschema does
        if len(_COMPILED) < 4096:
            _COMPILED[pattern] = found
    return found


_MATCHED: dict[tuple[str, str], bool] = {}
"""Remembered answers of `_matches` for short values: agents send the same values again
(an aspect ratio, a size), and one RE2 search through its Python wrapper costs about 3 µs
against 0.1 µs for this lookup. Bounded: past `_MATCHED_MAX` entries, values are searched
every time (never a wrong answer, only a slower one)."""
_MATCHED_MAX: Final = 4096
_MATCHED_TEXT_MAX: Final = 128


def _matches(pattern: str, text: str) -> bool:
    """Whether `pattern` (RE2, else Python's `re`) finds a match in `text`."""
    if len(text) > _MATCHED_TEXT_MAX:
        return _compiled(pattern).search(text) is not None
    key = (pattern, text)
    found = _MATCHED.get(key)
    if found is None:
        found = _compiled(pattern).search(text) is not None
        if len(_MATCHED) < _MATCHED_MAX:
            _MATCHED[key] = found
    return found


def _validator_class(schema: Mapping[str, Any]) -> Any:
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return jsonschema.validators.extend(base, {"pattern": _re2_pattern})  # type: ignore[no-untyped-call]


def _uses_ref(schema: Any) -> bool:
    return '"$ref"' in json.dumps(schema) or '"$dynamicRef"' in json.dumps(schema)


@dataclass(frozen=True, slots=True)
class _Members:
    """The member-by-member form of an object schema."""

    properties: Mapping[str, Any]
    """name → its subschema, compiled (`_judge`)."""
    required: tuple[str, ...]
    additional: Any
    """None: any other member is allowed; False: none is; else its compiled validator."""


class ArgumentSchema:
    """One tool's `inputSchema`, compiled."""

    __slots__ = ("_members", "_whole", "schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        cls = _validator_class(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            raise SchemaProblem(
                tuple(exc.path), f"not a valid JSON Schema: {exc.message}"
            ) from None
        except Exception as exc:  # an unknown $schema URI, a bad regex, ...
            raise SchemaProblem((), f"not a usable JSON Schema: {exc}") from None
        self._whole = cls(schema)
        self._members = self._member_form(cls, schema)
        for where, pattern in _patterns(schema, ()):
            try:
                _compiled(pattern)
            except re.error as exc:
                raise SchemaProblem(
                    where, f"pattern {pattern!r} is not a regular expression: {exc}"
                ) from None

    @staticmethod
    def _member_form(cls: Any, schema: Mapping[str, Any]) -> _Members | None:
        if not set(schema) <= _TOP_KEYWORDS or schema.get("type", "object") != "object":
            return None
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        if not isinstance(properties, Mapping) or _uses_ref(properties) or _uses_ref(additional):
            return None
        compiled = {name: _judge(cls, sub) for name, sub in properties.items()}
        if additional is True or additional == {}:
            extra: Any = None
        elif additional is False:
            extra = False
        else:
            extra = cls(additional)
        return _Members(compiled, tuple(schema.get("required", ())), extra)

    def violation(self, arguments: Mapping[str, Any]) -> Violation | None:
        """The first violation of the schema by `arguments`, or None when they validate."""
        members = self._members
        if members is None:
            return _first_of_whole(self._whole.iter_errors(arguments), arguments)
        for name in members.required:
            if name not in arguments:
                return Violation(_pointer((name,)), "required")
        for name, value in arguments.items():
            validator = members.properties.get(name)
            if validator is None:
                if members.additional is None:
                    continue
                if members.additional is False:
                    return Violation(_pointer((name,)), "additionalProperties")
                validator = members.additional
            if not validator.is_valid(value):
                return _first(validator.iter_errors(value), (name,))
        return None


def _first_of_whole(
    errors: Iterable[jsonschema.exceptions.ValidationError], arguments: Mapping[str, Any]
) -> Violation | None:
    """The first violation of a schema validated whole, in the member-by-member order: a
    missing required member, then any other fault of the arguments object itself, then the
    first member, in the arguments' order, that breaks the schema (an unexpected member
    at its own pointer, as `additionalProperties: false` names it)."""
    required: list[jsonschema.exceptions.ValidationError] = []
    itself: list[jsonschema.exceptions.ValidationError] = []
    by_member: dict[str, list[jsonschema.exceptions.ValidationError]] = {}
    unexpected: set[str] = set()
    for error in errors:
        if error.absolute_path:
            by_member.setdefault(str(error.absolute_path[0]), []).append(error)
        elif error.validator == "required":
            required.append(error)
        elif error.validator == "additionalProperties" and isinstance(error.schema, Mapping):
            extra = _unexpected(error.schema, arguments)
            if extra:
                unexpected.update(extra)
            else:
                itself.append(error)
        else:
            itself.append(error)
    if required or itself:
        return _first(required or itself, ())
    for name in arguments:
        if name in unexpected:
            return Violation(_pointer((name,)), "additionalProperties")
        found = by_member.get(name)
        if found:
            return _first(found, ())
    return None


def _unexpected(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> list[str]:
    """The members of `arguments` that `schema`'s `additionalProperties` judges."""
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    return [
        name
        for name in arguments
        if name not in properties and not any(re.search(p, name) for p in patterns)
    ]


def _first(
    errors: Iterable[jsonschema.exceptions.ValidationError], prefix: tuple[str | int, ...]
) -> Violation | None:
    error = jsonschema.exceptions.best_match(errors)
    if error is None:
        return None
    path = (*prefix, *error.absolute_path)
    keyword = "false" if error.validator is None else str(error.validator)  # a `false` schema
    if keyword in ("anyOf", "oneOf") and error.context:
        # every branch failed the same way at the same place (`["integer", "null"]`
        # given "500"): that keyword says more than "anyOf"
        found = {(str(e.validator), tuple(e.relative_path)) for e in error.context}
        if len(found) == 1:
            keyword, deeper = found.pop()
            path = (*path, *deeper)
    if keyword == "required" and isinstance(error.instance, Mapping):
        missing = [n for n in error.validator_value if n not in error.instance]
        if missing:
            path = (*path, missing[0])
    return Violation(_pointer(path), keyword)


# -- judges of the common subschemas --------------------------------------------------------
#
# The SDKs generate the same few property schemas: a type (`{"type": "string"}`), and an
# optional value, `anyOf` of a schema and `{"type": "null"}` (pydantic's `X | None`).
# jsonschema judges an `anyOf` branch through `descend`, which builds a validator for the
# branch on every call (about 3 µs each). A property is judged instead by what its schema
# holds, once per reload:
#
# - a schema whose only keyword jsonschema applies is `type`, of type names: the
#   validator's own type checker (`TYPE_CHECKER.is_type`, what the `type` keyword calls);
# - a schema whose only keyword jsonschema applies is `anyOf`: its branches, each judged
#   the same way, in order (valid when one is: the keyword's meaning);
# - any other schema: the jsonschema validator of that schema.
#
# The keywords counted are those jsonschema itself applies (`VALIDATORS`); titles,
# descriptions and defaults are not among them. A violation is always named by the
# jsonschema validator of the whole property schema (`iter_errors`), so a denial reads the
# same whichever way the value was judged.


class _Types:
    """A schema that asserts only `type`."""

    __slots__ = ("_is_type", "_types", "_whole")

    def __init__(self, cls: Any, schema: Mapping[str, Any], types: tuple[str, ...]) -> None:
        self._is_type = cls.TYPE_CHECKER.is_type
        self._types = types
        self._whole = cls(schema)

    def is_valid(self, value: Any) -> bool:
        is_type = self._is_type
        for name in self._types:  # noqa: SIM110 (a loop: any() of a generator costs 0.4 µs)
            if is_type(value, name):
                return True
        return False

    def iter_errors(self, value: Any) -> Iterator[jsonschema.exceptions.ValidationError]:
        return self._whole.iter_errors(value)  # type: ignore[no-any-return]


class _AnyOf:
    """A schema that asserts only `anyOf`."""

    __slots__ = ("_branches", "_whole")

    def __init__(self, cls: Any, schema: Mapping[str, Any], branches: tuple[Any, ...]) -> None:
        self._branches = branches
        self._whole = cls(schema)

    def is_valid(self, value: Any) -> bool:
        for branch in self._branches:  # noqa: SIM110 (as above)
            if branch.is_valid(value):
                return True
        return False

    def iter_errors(self, value: Any) -> Iterator[jsonschema.exceptions.ValidationError]:
        return self._whole.iter_errors(value)  # type: ignore[no-any-return]


_SIMPLE_KEYWORDS: Final = frozenset(
    {
        "type",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "pattern",
        "enum",
        "format",
    }
)
"""Keywords `_Simple` checks (`format` asserts nothing: no format checker is used)."""
_NUMERIC_EXCLUSIVE: Final = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-06/schema#",
    }
)
"""Drafts whose `exclusiveMinimum`/`exclusiveMaximum` are numbers (draft 4's are booleans)."""


class _Simple:
    """A schema of scalar keywords only (`_SIMPLE_KEYWORDS`, each of the usual shape):
    checked in a few comparisons, as jsonschema checks them; violations are named by
    jsonschema."""

    __slots__ = (
        "_bounds",
        "_enum",
        "_is_type",
        "_lengths",
        "_pattern",
        "_types",
        "_whole",
    )

    def __init__(self, cls: Any, schema: Mapping[str, Any]) -> None:
        self._is_type = cls.TYPE_CHECKER.is_type
        names = schema.get("type")
        self._types: tuple[str, ...] | None = (
            None if names is None else (names,) if isinstance(names, str) else tuple(names)
        )
        self._lengths = (schema.get("minLength"), schema.get("maxLength"))
        self._bounds = (
            schema.get("minimum"),
            schema.get("maximum"),
            schema.get("exclusiveMinimum"),
            schema.get("exclusiveMaximum"),
        )
        self._pattern: str | None = schema.get("pattern")
        enum = schema.get("enum")
        self._enum: frozenset[str] | None = None if enum is None else frozenset(enum)
        self._whole = cls(schema)

    @staticmethod
    def fits(cls: Any, schema: Mapping[str, Any], applied: list[str]) -> bool:
        """Whether `_Simple` judges `schema` exactly as `cls(schema)` does."""
        if not set(applied) <= _SIMPLE_KEYWORDS:
            return False
        names = schema.get("type")
        if names is not None and not (
            isinstance(names, str)
            or (isinstance(names, list) and all(isinstance(n, str) for n in names))
        ):
            return False
        for key in ("minLength", "maxLength"):
            value = schema.get(key)
            if value is not None and (type(value) is not int or value < 0):
                return False
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                return False
        exclusive = "exclusiveMinimum" in schema or "exclusiveMaximum" in schema
        if exclusive and cls.META_SCHEMA.get("$schema") not in _NUMERIC_EXCLUSIVE:
            return False
        enum = schema.get("enum")
        if enum is not None and not (
            isinstance(enum, list) and all(isinstance(item, str) for item in enum)
        ):
            return False
        pattern = schema.get("pattern")
        return pattern is None or isinstance(pattern, str)

    def is_valid(self, value: Any) -> bool:
        is_type = self._is_type
        if self._types is not None:
            for name in self._types:
                if is_type(value, name):
                    break
            else:
                return False
        if isinstance(value, str):
            low, high = self._lengths
            if (low is not None or high is not None) and (
                (low is not None and len(value) < low) or (high is not None and len(value) > high)
            ):
                return False
            if self._pattern is not None and not _matches(self._pattern, value):
                return False
        elif is_type(value, "number"):
            low, high, above, below = self._bounds
            if (
                (low is not None and value < low)
                or (high is not None and value > high)
                or (above is not None and value <= above)
                or (below is not None and value >= below)
            ):
                return False
        return self._enum is None or (isinstance(value, str) and value in self._enum)

    def iter_errors(self, value: Any) -> Iterator[jsonschema.exceptions.ValidationError]:
        return self._whole.iter_errors(value)  # type: ignore[no-any-return]


def _judge(cls: Any, schema: Any) -> Any:
    """What judges a value against `schema` (`is_valid`, `iter_errors`), as `cls(schema)`
    does, fastest."""
    if isinstance(schema, Mapping):
        applied = [key for key in schema if key in cls.VALIDATORS]
        if applied and applied != ["type"] and _Simple.fits(cls, schema, applied):
            return _Simple(cls, schema)
        if applied == ["type"]:
            names = schema["type"]
            names = [names] if isinstance(names, str) else names
            if isinstance(names, list) and all(isinstance(name, str) for name in names):
                return _Types(cls, schema, tuple(names))
        elif applied == ["anyOf"] and isinstance(schema["anyOf"], list):
            return _AnyOf(cls, schema, tuple(_judge(cls, branch) for branch in schema["anyOf"]))
    return cls(schema)


def _patterns(
    schema: Any, where: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(location, pattern) of every `pattern` keyword in the schema (not in its data:
    `const`, `enum`, `default` and `examples` may hold an object with a "pattern" member,
    such as a glob)."""
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield (*where, key), value
            elif key not in _DATA_KEYWORDS:
                yield from _patterns(value, (*where, key))
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _patterns(value, (*where, i))


def compile_schema(schema: Any) -> ArgumentSchema:
    """Compile a tool's `inputSchema`; `SchemaProblem` names what is wrong with it."""
    if not isinstance(schema, Mapping):
        raise SchemaProblem((), "an inputSchema must be a JSON object")
    return ArgumentSchema(schema)
