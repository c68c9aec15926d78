"""Readers: one per source format, each returning the common in-memory log :class:`Interactions`.

The log is a pyarrow Table with columns ``user`` (string), ``item`` (string), ``timestamp`` (int64 Unix
seconds, null where the source value is not a number), optional ``category`` (string) and, for pre-split
input (``comirec``), ``split`` (int8: 0 train, 1 valid, 2 test); plus a per-file report of rows read /
skipped / filtered. Cleaning (illegal timestamps, k-core, split) is :mod:`mirec.data.prepare`'s job.

CSV-like formats are parsed with ``pyarrow.csv`` (multi-threaded C++); only the JSON formats parse per line.
A malformed row raises :class:`MalformedRowError` naming the file, the line and the problem; with
``on_bad_rows="skip"`` it is skipped and counted.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import inspect
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mirec.choices import ON_BAD_ROWS

COLUMNS = ("user", "item", "timestamp", "category")
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

# Header names recognised by the generic csv reader (lower case).
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "user", "userid", "reviewerid", "uid", "user_id:token"),
    "item": ("item_id", "item", "itemid", "movieid", "asin", "iid", "item_id:token"),
    "timestamp": ("timestamp", "time", "unixreviewtime", "ts", "timestamp:float", "date"),
    "category": ("category", "cate", "category_id", "cat", "cate_id"),
}


class MalformedRowError(ValueError):
    """A row of an input file could not be parsed; the message names the file, the line and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = Path(path)
        self.line = line
        self.problem = printable(problem)
        where = f"{self.path} line {line}" if line is not None else f"{self.path}"
        hint = " (--on-bad-rows skip skips such rows)" if line is not None else ""
        super().__init__(f"{where}: {self.problem}{hint}")


def printable(text: str, limit: int = 200) -> str:
    """One line of printable text: control and undecodable characters escaped, cut at ``limit``."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EncodingError(MalformedRowError):
    """A line of a text input is not valid in the file's encoding."""


@dataclass
class Interactions:
    """The common log: ``table`` (user, item, timestamp[, category][, split]) and the read ``report``."""

    table: pa.Table
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def has_category(self) -> bool:
        return "category" in self.table.column_names

    @property
    def has_split(self) -> bool:
        return "split" in self.table.column_names

    def column(self, name: str) -> np.ndarray:
        """A column as numpy (strings as an object array; convenient for tests and small logs)."""
        return self.table.column(name).to_numpy(zero_copy_only=False)


# --------------------------------------------------------------------------------------------- helpers


def _open_binary(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # type: ignore[return-value]


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    return io.TextIOWrapper(_open_binary(path), encoding=encoding, errors="replace", newline="")


def _first_line(path: Path, encoding: str = "utf-8") -> str:
    with _open_text(path, encoding) as f:
        line = f.readline()
        if not line.strip() and not f.read(1):
            raise MalformedRowError(path, None, "empty file (no header and no rows)")
        return line.rstrip("\r\n")


def invalid_utf8_lines(
    path: Path, limit: int | None = None, chunk_size: int = 1 << 24
) -> list[tuple[int, str, int, int]]:
    """(1-based line number, problem, first byte, end byte incl. its newline) of the lines that are not valid
    UTF-8, at most ``limit`` of them (byte offsets in the decompressed content).

    A streaming pass at the codec's C speed: complete lines of each chunk are decoded at once, and only on
    an error is the failing line located (by counting newlines before the error's offset)."""
    found: list[tuple[int, str, int, int]] = []
    lines_before = bytes_before = 0
    pending = b""
    with _open_binary(path) as f:
        while True:
            block = f.read(chunk_size)
            data = pending + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            complete, pending = data[:cut], data[cut:]
            start = 0
            while start < len(complete):
                try:
                    complete[start:].decode("utf-8")
                    break
                except UnicodeDecodeError as exc:
                    offset = start + exc.start
                    line = lines_before + complete.count(b"\n", 0, offset) + 1
                    line_start = complete.rfind(b"\n", 0, offset) + 1
                    next_line = complete.find(b"\n", offset)
                    start = len(complete) if next_line < 0 else next_line + 1
                    found.append(
                        (
                            line,
                            f"invalid UTF-8 (byte 0x{complete[offset]:02x} at column "
                            f"{offset - line_start + 1}); give the file's encoding with --encoding, "
                            "e.g. latin-1",
                            bytes_before + line_start,
                            bytes_before + start,
                        )
                    )
                    if limit is not None and len(found) >= limit:
                        return found
            lines_before += complete.count(b"\n")
            bytes_before += len(complete)
            if not block:
                return found


def _without_spans(path: Path, spans: list[tuple[int, int]]) -> pa.BufferReader:
    """The file's bytes (decompressed) without the given [start, end) byte spans (whole lines), in memory;
    one slice per kept stretch, not one Python step per line."""
    with _open_binary(path) as f:
        data = f.read()
    kept, previous = [], 0
    for start, end in spans:  # sorted, disjoint: one per undecodable line
        kept.append(data[previous:start])
        previous = end
    kept.append(data[previous:])
    return pa.BufferReader(b"".join(kept))


def _input_stream(path: Path) -> pa.NativeFile:
    with open(path, "rb") as f:
        magic = f.read(2)
    return pa.input_stream(str(path), compression="gzip" if magic == b"\x1f\x8b" else None)


def _find_line(path: Path, text: str, header_lines: int, encoding: str = "utf-8") -> int | None:
    """1-based physical line number of the first data line equal to ``text`` (re-scan, only on error)."""
    with _open_text(path, encoding) as f:
        for number, line in enumerate(f, start=1):
            if number > header_lines and line.rstrip("\r\n") == text:
                return number
    return None


_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def parse_timestamps(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
    """String (or numeric) column -> int64 seconds; non-numeric values become null. Returns (array, n_null_new)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64()), values.null_count
    if pa.types.is_floating(values.type):
        finite = pc.fill_null(pc.is_finite(values), False)
        out = pc.if_else(finite, pc.floor(values), None).cast(pa.int64())
        return out, out.null_count
    values = values.cast(pa.string())
    try:  # fast path: every value is an integer
        out = pc.cast(values, pa.int64())
        return out, out.null_count
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    trimmed = pc.utf8_trim_whitespace(values)
    is_int = pc.fill_null(pc.match_substring_regex(trimmed, _INT_RE), False)
    is_float = pc.and_(pc.fill_null(pc.match_substring_regex(trimmed, _FLOAT_RE), False), pc.invert(is_int))
    ints = pc.cast(pc.if_else(is_int, trimmed, "0"), pa.int64())
    floats = pc.cast(pc.floor(pc.cast(pc.if_else(is_float, trimmed, "0"), pa.float64())), pa.int64())
    out = pc.if_else(is_int, ints, pc.if_else(is_float, floats, pa.scalar(None, pa.int64())))
    return out, out.null_count


def _file_report(path: Path, fmt: str, rows_read: int, rows_skipped: int, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "format": fmt, "rows_read": rows_read, "rows_skipped": rows_skipped, **extra}


def _check_on_bad_rows(on_bad_rows: str) -> None:
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")


def _bad_row_error(path: Path, bad_rows: list[Any], header: bool, encoding: str, every: bool) -> MalformedRowError:
    """The first malformed row as an error naming its line (``every``: all rows were malformed and skipped)."""
    row = bad_rows[0]
    line = _find_line(path, row.text, 1 if header else 0, encoding)
    prefix = f"every row is malformed ({len(bad_rows)} skipped), the first: " if every else ""
    detail = f"expected {row.expected_columns} fields, got {row.actual_columns}: {row.text[:80]!r}"
    return MalformedRowError(path, line, prefix + detail)


def _column_name(path: Path, names: list[str], out: str, spec: str | int) -> str:
    """The file's column for output ``out``: by index, by name (exact, then case-insensitive) or a digit string."""
    if isinstance(spec, int):
        if not 0 <= spec < len(names):
            raise MalformedRowError(path, 1, f"column index {spec} for {out!r} out of range ({len(names)} fields)")
        return names[spec]
    matches = [n for n in names if n == spec] or [n for n in names if n.lower() == str(spec).lower()]
    if not matches and str(spec).isdigit() and int(spec) < len(names):  # "2" from the command line
        matches = [names[int(spec)]]
    if not matches:
        raise MalformedRowError(path, 1, f"no column {spec!r} for {out!r} in header {names}")
    return matches[0]


def _read_delimited(
    path: Path,
    *,
    delimiter: str,
    column_names: Sequence[str] | None,
    header: bool,
    keep: dict[str, str | int],
    on_bad_rows: str,
    string_columns: Sequence[str] = (),
    encoding: str = "utf-8",
) -> tuple[pa.Table, int]:
    """pyarrow.csv read of ``path``; ``keep`` maps output name -> column name or index. Returns (table, skipped).

    UTF-8 input is checked first (one streaming pass): an invalid line is an error naming it, or skipped
    with ``on_bad_rows="skip"``; another ``encoding`` is transcoded by pyarrow."""
    bad_rows: list[Any] = []

    def handler(row: Any) -> str:
        bad_rows.append(row)
        return "skip"

    first = _first_line(path, encoding)
    utf8 = codecs.lookup(encoding).name == "utf-8"
    arrow_encoding = "utf8" if utf8 else encoding  # pyarrow transcodes anything but its own spelling of UTF-8
    undecodable = invalid_utf8_lines(path, limit=1 if on_bad_rows == "error" else None) if utf8 else []
    if undecodable and on_bad_rows == "error":
        raise EncodingError(path, *undecodable[0][:2])
    if undecodable and undecodable[0][0] == 1 and header:
        raise EncodingError(path, 1, "the header line is not valid UTF-8")
    if header:
        names = [n.strip() for n in first.split(delimiter)]
        read_options = pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24, encoding=arrow_encoding)
    else:
        if column_names is None:
            n_fields = len(first.split(delimiter))
            column_names = [f"f{i}" for i in range(n_fields)]
        names = list(column_names)
        read_options = pacsv.ReadOptions(column_names=names, block_size=1 << 24, encoding=arrow_encoding)
    resolved = {out: _column_name(path, names, out, spec) for out, spec in keep.items()}
    include = list(dict.fromkeys(resolved.values()))
    types = {resolved[c]: pa.string() for c in ("user", "item", "category", *string_columns) if c in resolved}

    def read(ts_type: pa.DataType) -> pa.Table:
        bad_rows.clear()
        if "timestamp" in resolved:
            types[resolved["timestamp"]] = ts_type
        convert = pacsv.ConvertOptions(
            include_columns=include, column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
        )
        parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler)
        source = _without_spans(path, [(a, b) for *_, a, b in undecodable]) if undecodable else _input_stream(path)
        with source as stream:
            return pacsv.read_csv(stream, read_options=read_options, parse_options=parse, convert_options=convert)

    try:
        try:  # fast path: integer timestamps parsed directly; otherwise strings, cleaned by parse_timestamps
            table = read(pa.int64())
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc):
                raise
            table = read(pa.string())
    except pa.ArrowInvalid as exc:
        raise MalformedRowError(path, None, str(exc)) from exc
    if bad_rows and (on_bad_rows == "error" or table.num_rows == 0):
        raise _bad_row_error(path, bad_rows, header, encoding, every=on_bad_rows != "error")
    columns = {out: table.column(name) for out, name in resolved.items()}
    return pa.table(columns), len(bad_rows) + len(undecodable)


def _finish(table: pa.Table, path: Path) -> tuple[pa.Table, int]:
    """Normalise column types; timestamps -> int64 with nulls for non-numeric values."""
    ts, n_bad = parse_timestamps(table.column("timestamp"))

    def as_string(column: pa.ChunkedArray) -> pa.ChunkedArray:
        return column if column.type == pa.string() else pc.cast(column, pa.string())

    columns: dict[str, Any] = {
        "user": as_string(table.column("user")),
        "item": as_string(table.column("item")),
        "timestamp": ts,
    }
    if "category" in table.column_names:
        columns["category"] = as_string(table.column("category"))
    if "split" in table.column_names:
        columns["split"] = table.column("split")
    return pa.table(columns), n_bad


def _as_bool(value: bool | str | None) -> bool | None:
    """Reader options may come from the command line as strings ("true", "false", "auto")."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y"):
        return True
    if text in ("0", "false", "no", "n"):
        return False
    if text in ("", "auto", "none"):
        return None
    raise ValueError(f"expected a boolean (true/false/auto), got {value!r}")


def _sniff_delimiter(line: str) -> str:
    for candidate in ("\t", ",", ";", "|", " "):
        if candidate in line:
            return candidate
    return ","


# --------------------------------------------------------------------------------------------- readers


def csv_layout(
    path: Path,
    delimiter: str | None = None,
    header: bool | str | None = None,
    user: str | int | None = None,
    item: str | int | None = None,
    timestamp: str | int | None = None,
    category: str | int | None = None,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> tuple[str, bool, dict[str, str | int]]:
    """(delimiter, header, {column: name or index}) of a CSV/TSV file from its first line and the options; shared
    by this reader and the Spark engine (mirec.data.spark_prepare), so both read a file the same way."""
    header = _as_bool(header)
    first = _first_line(path, encoding)
    delimiter = {"tab": "\t", "\\t": "\t", "comma": ",", "space": " "}.get(
        delimiter or "", delimiter
    ) or _sniff_delimiter(first)
    fields = [f.strip().lower() for f in first.split(delimiter)]
    if header is None:
        known = {n for names in DEFAULT_NAMES.values() for n in names}
        header = column_names is None and any(f in known for f in fields)
    specs: dict[str, str | int | None] = {"user": user, "item": item, "timestamp": timestamp, "category": category}
    keep: dict[str, str | int] = {}
    for out, spec in specs.items():
        if spec is not None:
            keep[out] = spec
        elif header:
            found = next((i for i, f in enumerate(fields) if f in DEFAULT_NAMES[out]), None)
            if found is not None:
                keep[out] = found
        elif out != "category":
            keep[out] = ("user", "item", "timestamp").index(out)
    missing = [c for c in ("user", "item", "timestamp") if c not in keep]
    if missing:
        raise MalformedRowError(path, 1, f"cannot find column(s) {missing} in header {fields}; pass them explicitly")
    return delimiter, bool(header), keep


def read_csv(
    path: str | Path,
    *,
    on_bad_rows: str = "error",
    delimiter: str | None = None,
    header: bool | None = None,
    user: str | int | None = None,
    item: str | int | None = None,
    timestamp: str | int | None = None,
    category: str | int | None = None,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> tuple[pa.Table, dict[str, Any]]:
    """Generic CSV/TSV (gzip or not, header or not, delimiter auto or given, columns by name or index).

    Reads the shared ``interactions.tsv.gz`` files (``user_id item_id timestamp [category]``).
    Without a header the defaults are user=0, item=1, timestamp=2, no category.
    """
    path = Path(path)
    delimiter, header, keep = csv_layout(
        path, delimiter, header, user, item, timestamp, category, column_names, encoding
    )
    table, skipped = _read_delimited(
        path,
        delimiter=delimiter,
        column_names=column_names,
        header=header,
        keep=keep,
        on_bad_rows=on_bad_rows,
        encoding=encoding,
    )
    table, bad_ts = _finish(table, path)
    return table, _file_report(path, "csv", table.num_rows + skipped, skipped, non_numeric_timestamps=bad_ts)


TAOBAO_BEHAVIORS = ("pv", "buy", "cart", "fav")  # UserBehavior.csv's behaviour types (Tianchi dataset 649)


def read_taobao(
    path: str | Path, *, on_bad_rows: str = "error", behaviors: Sequence[str] | str = ("pv",), encoding: str = "utf-8"
) -> tuple[pa.Table, dict[str, Any]]:
    """Tianchi UserBehavior.csv ``user,item,category,behavior,timestamp`` (no header); keeps ``behaviors``.

    ComiRec/PIMI keep 'pv' rows only; Taobao-Buy keeps 'buy'. ``behaviors="all"`` keeps every row.
    """
    path = Path(path)
    wanted = behaviors.split(",") if isinstance(behaviors, str) else list(behaviors)
    unknown = sorted(set(wanted) - {*TAOBAO_BEHAVIORS, "all"})
    if unknown:
        valid = ", ".join(TAOBAO_BEHAVIORS)
        raise ValueError(f"--behaviors {','.join(unknown)}: unknown; expected some of {valid} (comma-separated) or all")
    table, skipped = read_layout(path, "taobao", on_bad_rows, encoding)
    n = table.num_rows
    if "all" not in wanted:
        table = table.filter(pc.is_in(table.column("behavior"), value_set=pa.array(wanted, pa.string())))
    filtered = n - table.num_rows
    table, bad_ts = _finish(table.drop_columns(["behavior"]), path)
    return table, _file_report(
        path,
        "taobao",
        n + skipped,
        skipped,
        rows_filtered_behavior=filtered,
        behaviors=behaviors,
        non_numeric_timestamps=bad_ts,
    )


@dataclass(frozen=True)
class FixedLayout:
    """A delimited format whose columns are known: how to read it, nothing else differs between them."""

    doc: str
    delimiter: str
    columns: tuple[str, ...] | None  # None: the file's header names them
    keep: dict[str, str]  # output column -> file column
    string_columns: tuple[str, ...] = ()


FIXED_LAYOUTS: dict[str, FixedLayout] = {
    "amazon-ratings": FixedLayout(
        "Amazon 2014 ratings-only CSV ``user,item,rating,timestamp`` (no header).",
        ",",
        ("user", "item", "rating", "timestamp"),
        {"user": "user", "item": "item", "timestamp": "timestamp"},
    ),
    "movielens-dat": FixedLayout(
        "MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp`` (split on ':' -> 7 fields).",
        ":",
        ("user", "_a", "item", "_b", "rating", "_c", "timestamp"),
        {"user": "user", "item": "item", "timestamp": "timestamp"},
    ),
    "movielens-csv": FixedLayout(
        "MovieLens ``ratings.csv`` with header ``userId,movieId,rating,timestamp``.",
        ",",
        None,
        {"user": "userId", "item": "movieId", "timestamp": "timestamp"},
    ),
    "taobao": FixedLayout(
        "Tianchi UserBehavior.csv ``user,item,category,behavior,timestamp`` (no header).",
        ",",
        ("user", "item", "category", "behavior", "timestamp"),
        {"user": "user", "item": "item", "category": "category", "behavior": "behavior", "timestamp": "timestamp"},
        ("behavior",),
    ),
}


def read_layout(path: Path, fmt: str, on_bad_rows: str, encoding: str) -> tuple[pa.Table, int]:
    """(table with the layout's kept columns, rows skipped) of a fixed-layout file."""
    layout = FIXED_LAYOUTS[fmt]
    return _read_delimited(
        path,
        delimiter=layout.delimiter,
        column_names=list(layout.columns) if layout.columns else None,
        header=layout.columns is None,
        keep=dict(layout.keep),
        on_bad_rows=on_bad_rows,
        string_columns=layout.string_columns,
        encoding=encoding,
    )


def _fixed_layout_reader(fmt: str) -> FileReader:
    """The reader of a fixed-layout format: read, normalise, report."""

    def read(path: str | Path, *, on_bad_rows: str = "error", encoding: str = "utf-8") -> tuple[pa.Table, dict]:
        path = Path(path)
        table, skipped = read_layout(path, fmt, on_bad_rows, encoding)
        table, bad_ts = _finish(table, path)
        return table, _file_report(path, fmt, table.num_rows + skipped, skipped, non_numeric_timestamps=bad_ts)

    read.__doc__ = FIXED_LAYOUTS[fmt].doc
    read.__name__ = read.__qualname__ = "read_" + fmt.replace("-", "_")
    return read


FileReader = Callable[..., tuple[pa.Table, dict[str, Any]]]
read_amazon_ratings = _fixed_layout_reader("amazon-ratings")
read_movielens_dat = _fixed_layout_reader("movielens-dat")
read_movielens_csv = _fixed_layout_reader("movielens-csv")


def read_parquet(
    path: str | Path,
    *,
    on_bad_rows: str = "error",
    user: str = "user",
    item: str = "item",
    timestamp: str = "timestamp",
    category: str | None = None,
    encoding: str = "utf-8",
) -> tuple[pa.Table, dict[str, Any]]:
    """Parquet with user/item/timestamp[/category] columns (names configurable)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if codecs.lookup(encoding).name != "utf-8":
        raise ValueError(f"{path}: Parquet strings are always UTF-8; --encoding {encoding} does not apply")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise MalformedRowError(path, None, f"not a readable Parquet file ({exc})") from None
    wanted = {"user": user, "item": item, "timestamp": timestamp}
    if category is not None or "category" in names:
        wanted["category"] = category or "category"
    missing = [v for v in wanted.values() if v not in names]
    if missing:
        raise MalformedRowError(path, None, f"missing column(s) {missing}; columns are {names}")
    raw = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
    table, bad_ts = _finish(pa.table({out: raw.column(src) for out, src in wanted.items()}), path)
    return table, _file_report(path, "parquet", table.num_rows, 0, non_numeric_timestamps=bad_ts)


def _iter_json_records(path: Path, literal: bool, encoding: str = "utf-8") -> Iterator[tuple[int, str, Any]]:
    """(line number, text, parsed record or None) per non-empty line; strict JSON, else Python literal.
    A line that does not decode in ``encoding`` yields (number, problem text, ``UNDECODABLE``)."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode(encoding).strip()
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    f"not valid {encoding} (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                    UNDECODABLE,
                )
                continue
            if not text:
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = None
                if literal:
                    try:
                        record = ast.literal_eval(text)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        record = None
            yield number, text, record


UNDECODABLE = object()  # marker of a line that is not valid in the file's encoding


def _read_json_lines(
    path: Path, fmt: str, *, on_bad_rows: str, literal: bool, category: str | None, encoding: str = "utf-8"
) -> tuple[pa.Table, dict[str, Any]]:
    users: list[str] = []
    items: list[str] = []
    times: list[Any] = []
    skipped = 0
    if path.stat().st_size == 0:
        raise MalformedRowError(path, None, "empty file (no records)")
    for number, text, record in _iter_json_records(path, literal, encoding):
        problem = None
        if record is UNDECODABLE:
            problem = text + "; give the file's encoding with --encoding, e.g. latin-1"
        elif not isinstance(record, dict):
            problem = "not a JSON object" + (" or Python literal" if literal else "") + f": {text[:80]!r}"
        else:
            missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in record]
            if missing:
                problem = f"missing key(s) {missing}"
        if problem is not None:
            if on_bad_rows == "error":
                raise MalformedRowError(path, number, problem)
            skipped += 1
            continue
        users.append(str(record["reviewerID"]))
        items.append(str(record["asin"]))
        times.append(str(record["unixReviewTime"]))
    columns: dict[str, Any] = {
        "user": pa.array(users, pa.string()),
        "item": pa.array(items, pa.string()),
        "timestamp": pa.array(times, pa.string()),
    }
    if category is not None:
        columns["category"] = pa.array(np.full(len(users), category, dtype=object), pa.string())
    table, bad_ts = _finish(pa.table(columns), path)
    return table, _file_report(path, fmt, len(users) + skipped, skipped, non_numeric_timestamps=bad_ts)


def _file_category(path: Path, category: str | bool | None) -> str | None:
    """``category=True``: the Amazon category from the file name (reviews_Books_5.json.gz -> Books)."""
    if isinstance(category, str) and category.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        category = _as_bool(category)
    if category is True:
        stem = re.sub(r"(\.json|\.gz|\.jsonl)+$", "", path.name)
        stem = re.sub(r"^reviews_", "", stem)
        return re.sub(r"_5$", "", stem)
    return category or None


def read_amazon_reviews(
    path: str | Path, *, on_bad_rows: str = "error", category: str | bool | None = None, encoding: str = "utf-8"
) -> tuple[pa.Table, dict[str, Any]]:
    """Amazon 2014 review files (5-core ``reviews_*_5.json[.gz]``): one record per line, strict JSON or the
    Python-literal style (single quotes) those dumps use; keys reviewerID, asin, unixReviewTime.

    ``category=True`` tags every row with the file's category (for merged sets such as Amazon-Hybrid).
    """
    path = Path(path)
    return _read_json_lines(
        path,
        "amazon-reviews",
        on_bad_rows=on_bad_rows,
        literal=True,
        category=_file_category(path, category),
        encoding=encoding,
    )


def read_amazon_2018(
    path: str | Path, *, on_bad_rows: str = "error", category: str | bool | None = None, encoding: str = "utf-8"
) -> tuple[pa.Table, dict[str, Any]]:
    """Amazon 2018 JSON lines (same keys reviewerID, asin, unixReviewTime)."""
    path = Path(path)
    return _read_json_lines(
        path,
        "amazon-2018",
        on_bad_rows=on_bad_rows,
        literal=False,
        category=_file_category(path, category),
        encoding=encoding,
    )


FILE_READERS: dict[str, FileReader] = {
    "csv": read_csv,
    "parquet": read_parquet,
    "amazon-ratings": read_amazon_ratings,
    "amazon-reviews": read_amazon_reviews,
    "amazon-2018": read_amazon_2018,
    "taobao": read_taobao,
    "movielens-dat": read_movielens_dat,
    "movielens-csv": read_movielens_csv,
}
FORMATS = (*FILE_READERS, "comirec")


# --------------------------------------------------------------------------------------------- comirec


def _comirec_files(inputs: Sequence[Path]) -> tuple[dict[str, Path], Path | None, str]:
    pattern = re.compile(r"^(?P<name>.+)_(?P<part>train|valid|test|item_cate)\.txt(\.gz)?$")
    found: dict[str, Path] = {}
    names = set()
    for given in inputs:
        strict = not given.is_dir()
        for path in [given] if strict else sorted(given.iterdir()):
            match = pattern.match(path.name)
            if match is None:
                if strict:
                    raise ValueError(f"comirec: {path} is not named <name>_(train|valid|test|item_cate).txt[.gz]")
                continue
            if match["part"] in found:
                raise ValueError(f"comirec: two {match['part']} files: {found[match['part']]} and {path}")
            found[match["part"]] = path
            names.add(match["name"])
    missing = [p for p in ("train", "valid", "test") if p not in found]
    if missing:
        where = ", ".join(str(p) for p in inputs)
        raise FileNotFoundError(f"comirec: no <name>_{'/'.join(missing)}.txt[.gz] in {where}")
    if len(names) > 1:
        raise ValueError(f"comirec: files of several datasets mixed: {sorted(names)}")
    return {p: found[p] for p in ("train", "valid", "test")}, found.get("item_cate"), names.pop()


def read_comirec(inputs: Sequence[str | Path], *, on_bad_rows: str = "error", encoding: str = "utf-8") -> Interactions:
    """Pre-split ComiRec/PIMI files ``<name>_{train,valid,test}.txt[.gz]`` (lines ``user,item,time``) plus the
    optional ``<name>_item_cate.txt`` (``item,cate``); the user split is kept as is (column ``split``)."""
    _check_on_bad_rows(on_bad_rows)
    files, cate_file, name = _comirec_files([Path(p) for p in inputs])
    tables = []
    reports = []
    for part, path in files.items():
        table, skipped = _read_delimited(
            path,
            delimiter=",",
            column_names=["user", "item", "timestamp"],
            header=False,
            keep={"user": "user", "item": "item", "timestamp": "timestamp"},
            on_bad_rows=on_bad_rows,
            encoding=encoding,
        )
        table, bad_ts = _finish(table, path)
        table = table.append_column("split", pa.array(np.full(table.num_rows, SPLIT_CODES[part], np.int8)))
        tables.append(table)
        reports.append(
            _file_report(path, "comirec", table.num_rows + skipped, skipped, split=part, non_numeric_timestamps=bad_ts)
        )
    table = pa.concat_tables(tables)
    if cate_file is not None:
        cate, skipped = _read_delimited(
            cate_file,
            delimiter=",",
            column_names=["item", "category"],
            header=False,
            keep={"item": "item", "category": "category"},
            on_bad_rows=on_bad_rows,
            encoding=encoding,
        )
        reports.append(_file_report(cate_file, "comirec-item-cate", cate.num_rows + skipped, skipped))
        index = pc.index_in(table.column("item"), value_set=cate.column("item"))
        table = table.append_column("category", pc.take(cate.column("category"), index))
    return Interactions(table, _merge_reports(reports, "comirec", name=name))


# --------------------------------------------------------------------------------------------- entry point


def _merge_reports(files: list[dict[str, Any]], fmt: str, **extra: Any) -> dict[str, Any]:
    return {
        "format": fmt,
        "files": files,
        "rows_read": sum(f["rows_read"] for f in files if not f["format"].endswith("item-cate")),
        "rows_skipped": sum(f["rows_skipped"] for f in files),
        "rows_filtered_behavior": sum(f.get("rows_filtered_behavior", 0) for f in files),
        "non_numeric_timestamps": sum(f.get("non_numeric_timestamps", 0) for f in files),
        **extra,
    }


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files behind the inputs, in reading order: a file as given; a folder (a partitioned dataset too)
    as every file beneath it sorted by relative path, skipping names that start with "." or "_" (Spark's and
    Hive's _SUCCESS, .crc and staging files). Partition values in folder names are not read."""
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(
            f
            for f in path.rglob("*")
            if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)
        )
        if not found:
            raise FileNotFoundError(f"input folder {path} holds no data file")
        files.extend(found)
    return files


def check_reader_options(reader: Callable[..., Any], fmt: str, options: dict[str, Any]) -> None:
    """An unknown reader option is a one-line error listing the format's options (not a TypeError)."""
    accepted = [
        name
        for name, param in inspect.signature(reader).parameters.items()
        if param.kind == inspect.Parameter.KEYWORD_ONLY and name != "on_bad_rows"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"--reader-option {unknown[0]}: not an option of format {fmt}; its options: {', '.join(accepted) or 'none'}"
        )


def read_interactions(
    inputs: Sequence[str | Path] | str | Path, fmt: str, *, on_bad_rows: str = "error", **reader_options: Any
) -> Interactions:
    """Read one or several files of format ``fmt`` and merge them into one log (e.g. Amazon-Hybrid's five files)."""
    _check_on_bad_rows(on_bad_rows)
    paths = [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input files given")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    reader = read_comirec if fmt == "comirec" else FILE_READERS[fmt]
    check_reader_options(reader, fmt, reader_options)
    if fmt == "comirec":
        return read_comirec(paths, on_bad_rows=on_bad_rows, **reader_options)
    tables = []
    reports = []
    for path in input_files(paths):
        table, report = reader(path, on_bad_rows=on_bad_rows, **reader_options)
        tables.append(table)
        reports.append(report)
    if len(tables) > 1 and len({tuple(t.column_names) for t in tables}) > 1:
        # Some files carry a category and others not: add a null category where absent.
        for i, t in enumerate(tables):
            if "category" not in t.column_names:
                tables[i] = t.append_column("category", pa.nulls(t.num_rows, pa.string()))
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return Interactions(table, _merge_reports(reports, fmt))


def from_arrays(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, category: np.ndarray | None = None
) -> Interactions:
    """An in-memory log from numpy arrays (ids of any type are turned into strings)."""
    columns: dict[str, Any] = {
        "user": pc.cast(pa.array(np.asarray(user)), pa.string()),
        "item": pc.cast(pa.array(np.asarray(item)), pa.string()),
        "timestamp": pa.array(np.asarray(timestamp, dtype=np.int64)),
    }
    if category is not None:
        columns["category"] = pc.cast(pa.array(np.asarray(category)), pa.string())
    table = pa.table(columns)
    return Interactions(
        table,
        {
            "format": "arrays",
            "files": [],
            "rows_read": table.num_rows,
            "rows_skipped": 0,
            "rows_filtered_behavior": 0,
            "non_numeric_timestamps": 0,
        },
    )
