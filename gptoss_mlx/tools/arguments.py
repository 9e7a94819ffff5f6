"""Checking a function call's JSON arguments against the function's JSON schema.

Only what a model gets wrong in practice is checked (not JSON, not an object, a required key
missing, a value of the wrong basic type); the message names the problem so the model can fix it.
"""

from __future__ import annotations

import json
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def parse_arguments(text: str, schema: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """The arguments object and None, or ({}, what is wrong with them)."""
    stripped = text.strip()
    if not stripped:
        value: Any = {}
    else:
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as err:
            return {}, f"the arguments are not valid JSON ({err.msg} at position {err.pos})"
    if not isinstance(value, dict):
        return {}, f"the arguments must be a JSON object, not {_json_type(value)}"
    problem = _check_object(value, schema or {})
    return (value, None) if problem is None else ({}, problem)


def _check_object(value: dict[str, Any], schema: dict[str, Any]) -> str | None:
    properties = schema.get("properties") or {}
    missing = [k for k in schema.get("required") or [] if k not in value]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    for key, item in value.items():
        spec = properties.get(key)
        if not isinstance(spec, dict):
            if schema.get("additionalProperties") is False:
                return f"unknown argument {key!r}; expected one of {', '.join(properties)}"
            continue
        expected = spec.get("type")
        if expected is not None and not _has_type(item, expected):
            want = " or ".join(expected) if isinstance(expected, list) else expected
            return f"argument {key!r} must be {want}, not {_json_type(item)}"
        if "enum" in spec and item not in spec["enum"]:
            return f"argument {key!r} must be one of {json.dumps(spec['enum'])}"
    return None


def _has_type(value: Any, expected: str | list[str]) -> bool:
    names = expected if isinstance(expected, list) else [expected]
    for name in names:
        types = _TYPES.get(name)
        if types is None:
            return True  # a type we do not check
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, types):
            return True
    return False


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if isinstance(value, bool) != (name == "boolean"):
            continue
        if isinstance(value, _TYPES[name]):
            return (
                "a number"
                if name in ("integer", "number")
                else f"a{'n' if name[0] in 'aeiou' else ''} {name}"
            )
    return type(value).__name__
