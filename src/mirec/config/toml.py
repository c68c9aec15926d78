"""TOML: a config as a TOML document (written by tomli-w, read by :mod:`tomllib`), values as one-line TOML literals
and back. The literals stay ours: ``--set`` values and bench cell names need one line in a fixed form (tomli-w
writes arrays over several lines), and resumed grids find their cells by that form."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import tomli_w


def toml_literal(value: Any, separator: str = ", ") -> str:
    """A TOML literal of a str, int, float, bool or list of those (``separator`` between list items)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + separator.join(toml_literal(v, separator) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML literal")


def parse_toml_literal(text: str) -> Any:
    """A TOML literal, as ``--set`` reads values: numbers, booleans, strings, lists; anything else (a bare word)
    is the string itself, stripped."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def to_toml(data: dict[str, Any]) -> str:
    """A TOML document of our sections (tomli-w, the standard writer)."""
    return tomli_w.dumps(data)
