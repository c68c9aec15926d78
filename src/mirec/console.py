"""What the CLI prints for a person: plain aligned tables. Scripts get JSON (``--json``, or whenever standard
output is not a terminal), so piping a command keeps working unchanged."""

from __future__ import annotations

import math
import sys
from typing import Any

WIDTH = 100  # a cell longer than this is cut with an ellipsis (the JSON has it whole)


def wants_table(args: Any) -> bool:
    return not getattr(args, "json", False) and sys.stdout.isatty()


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) and abs(value) < 1e6 else repr(value)
    if isinstance(value, list | tuple):
        value = ", ".join(cell(v) for v in value)
    text = " ".join(str(value).split())
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Columns padded to their widest cell; a rule under the header."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def flatten(data: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """Nested dicts as (dotted key, value) rows."""
    rows: list[list[Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += flatten(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", value])
    return rows


def models_table(zoo: dict[str, Any]) -> str:
    rows = [[name, paper] for name, paper in zoo.items() if name not in ("recipes", "which to use")]
    rows += [[name, f"recipe: {text}"] for name, text in zoo.get("recipes", {}).items()]
    footer = f"\nWhich to use: {zoo['which to use']}" if "which to use" in zoo else ""
    return table(rows, ["model", "paper"]) + footer


def options_table(options: dict[str, dict[str, Any]]) -> str:
    rows = [[name, o["default"], o.get("choices", o.get("type", "")), o["description"]] for name, o in options.items()]
    return table(rows, ["option", "default", "choices or type", "description"])


def datasets_table(registry: dict[str, dict[str, Any]]) -> str:
    rows = [
        [name, "yes" if d.get("bundled") else "no", d.get("format", ""), d.get("description", "")]
        for name, d in registry.items()
    ]
    return table(rows, ["dataset", "bundled", "format", "description"])


def metrics_table(metrics: dict[str, Any]) -> str:
    return table(flatten(metrics), ["metric", "value"])


__all__ = ["wants_table", "table", "models_table", "options_table", "datasets_table", "metrics_table"]
