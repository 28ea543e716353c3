"""A pydantic ValidationError as the one line a command prints: which command-line option (or
environment variable) holds the bad value, what it allows, and what it got.

    option_error(exc, GenerationRequest, {"num_frames": "--frames"})
    -> "--frames must be >= 1 and <= 1024, got -5"

The allowed range is read from the model's field constraints (`Field(ge=..., le=...)`), so the
message follows the model when its limits change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

# pydantic's error types for a number outside a field's bounds.
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)
_LONGEST_SHOWN_INPUT = 60


def option_error(
    exc: ValidationError,
    model: type[BaseModel],
    options: Mapping[str, str],
    unnamed: Callable[[str], str] = lambda field: field,
) -> str:
    """One line for every error in `exc` (joined by "; "). `options`: field name -> the option that
    set it (`--frames`); `unnamed(field)`: the name of a field no option set (an environment
    variable)."""
    parts = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = options.get(field) or (unnamed(field) if field else "")
        parts.append(_describe(error, name, model.model_fields.get(field)))
    return "; ".join(parts)


def allowed_range(field: FieldInfo | None, context: Mapping[str, Any] | None = None) -> str:
    """ ">= 1 and <= 1024" from a field's constraints (else from the error's context)."""
    found: list[str] = []
    for kind, attribute, symbol in _BOUNDS:
        bound = next(
            (getattr(m, attribute) for m in (field.metadata if field else []) if isinstance(m, kind)), None
        )
        if bound is None and context is not None:
            bound = context.get(attribute)
        if bound is not None:
            found.append(f"{symbol} {bound}")
    return " and ".join(found)


def _describe(error: Mapping[str, Any], name: str, field: FieldInfo | None) -> str:
    value = error.get("input")
    if error["type"] in RANGE_ERRORS:
        return f"{name} must be {allowed_range(field, error.get('ctx'))}, got {_shown(value)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if not name:  # a check of several fields together
        return message
    if isinstance(value, int | float | str) and len(_shown(value)) <= _LONGEST_SHOWN_INPUT:
        return f"{name}: {message}, got {_shown(value)}"
    return f"{name}: {message}"


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
