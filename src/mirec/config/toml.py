"""TOML: a config as a TOML document, values as TOML literals and back (documents are read with :mod:`tomllib`)."""

from __future__ import annotations

import json
import tomllib
from typing import Any


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
    """Minimal TOML writer for our flat sections (str, int, float, bool, lists of those)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_literal(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
