"""Item side features: the table given to ``mirec prepare --items``, encoded per internal item id.

Three kinds of column, declared by the user as ``NAME:KIND``:

- ``categorical``: one value per item (a brand); ``multi``: several values (``a|b|c`` in CSV/TSV, a list column in
  Parquet; categories, tags). Both are stored as CSR over item ids 0..n_items (``indptr``, ``values``) with the
  values numbered 1..V by descending frequency (ties: by text) and 0 = missing: an item without a value has the
  single value 0, a learned "missing" row of the model's feature embedding.
- ``dense``: a fixed-length vector (pre-computed text or image embeddings): a fixed-size list column in Parquet,
  ``|``-separated numbers in CSV/TSV; stored as ``[n_items + 1, dim]`` float32, zeros where missing.

Files in a prepared folder or a bundle: ``item_features.json`` (kinds, vocabularies, dimensions) and
``feature_{name}_{indptr,values,vectors}.npy`` (memory-mapped when loaded). Nothing is pickled.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa

FeatureKind = Literal["categorical", "multi", "dense"]
FEATURES_FILE = "item_features.json"
FEATURES_FORMAT = 1
FEATURE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # names become file names: no separators
MISSING = 0


@dataclass(frozen=True)
class FeatureSpec:
    """One declared column of the item table."""

    name: str  # the column's name in the table (and the feature's name in ``model.item_features``)
    kind: FeatureKind  # categorical | multi (several values per item) | dense (a fixed-length vector)

    def __post_init__(self) -> None:
        if not FEATURE_NAME.match(self.name):
            raise ValueError(f"item feature name {self.name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if self.kind not in get_args(FeatureKind):
            raise ValueError(f"item feature {self.name!r}: kind {self.kind!r}; expected one of {get_args(FeatureKind)}")

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        """``NAME:KIND`` (``brand:categorical``, ``attributes:multi``, ``text_vec:dense``)."""
        name, sep, kind = text.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--item-feature {text!r}: expected NAME:KIND with KIND in {get_args(FeatureKind)}")
        return cls(name, kind)  # type: ignore[arg-type]


@dataclass
class EncodedFeature:
    """One feature's values for item ids 0..n_items."""

    spec: FeatureSpec
    vocab: list[str] = field(default_factory=list)  # categorical/multi: value v (1..V) is vocab[v - 1]
    indptr: np.ndarray | None = None  # [n_items + 2] int64
    values: np.ndarray | None = None  # int64 value ids, >= 1 value per item (0 = missing)
    vectors: np.ndarray | None = None  # dense: [n_items + 1, dim] float32

    @property
    def n_items(self) -> int:
        return (len(self.vectors) if self.vectors is not None else len(self.indptr) - 1) - 1  # type: ignore[arg-type]

    @property
    def dim(self) -> int:
        """Dense: the vector length; categorical/multi: the number of values V (ids 1..V, 0 = missing)."""
        return int(self.vectors.shape[1]) if self.vectors is not None else len(self.vocab)

    def rows(self, ids: np.ndarray) -> EncodedFeature:
        """The same feature for the item ids ``ids`` (new id i = old id ids[i]); ids[0] must be 0 (padding)."""
        if self.vectors is not None:
            return EncodedFeature(self.spec, vectors=np.ascontiguousarray(self.vectors[ids]))
        assert self.indptr is not None and self.values is not None
        starts, ends = self.indptr[ids], self.indptr[ids + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        take = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return EncodedFeature(self.spec, list(self.vocab), indptr, np.asarray(self.values)[take].astype(np.int64))


@dataclass
class ItemFeatures:
    """Every declared feature of a catalogue, aligned with the internal item ids 0..n_items."""

    features: list[EncodedFeature]
    report: dict = field(default_factory=dict)  # what encoding the table found (counts), kept in meta.json

    @property
    def n_items(self) -> int:
        return self.features[0].n_items if self.features else 0

    @property
    def names(self) -> list[str]:
        return [f.spec.name for f in self.features]

    def get(self, name: str) -> EncodedFeature:
        for feature in self.features:
            if feature.spec.name == name:
                return feature
        raise KeyError(f"item feature {name!r} not in the table's features {self.names}")

    def select(self, names: tuple[str, ...] | list[str]) -> ItemFeatures:
        return ItemFeatures([self.get(n) for n in names], dict(self.report))

    def rows(self, ids: np.ndarray) -> ItemFeatures:
        return ItemFeatures([f.rows(np.asarray(ids, dtype=np.int64)) for f in self.features], dict(self.report))

    def appended(self, new: ItemFeatures) -> ItemFeatures:
        """These items followed by ``new``'s items 1..n (encoded with these vocabularies: ``like=self``)."""
        out = []
        for old, add in zip(self.features, (new.get(n) for n in self.names), strict=True):
            if old.vectors is not None:
                out.append(EncodedFeature(old.spec, vectors=np.concatenate([old.vectors, add.vectors[1:]])))
                continue
            start = int(add.indptr[1])  # skip new item 0 (padding)
            indptr = np.concatenate([old.indptr, old.indptr[-1] + add.indptr[2:] - start])
            values = np.concatenate([old.values, add.values[start:]])
            out.append(EncodedFeature(old.spec, list(old.vocab), indptr.astype(np.int64), values.astype(np.int64)))
        return ItemFeatures(out, dict(new.report))

    def describe(self) -> dict:
        """The JSON part: kinds, dimensions, vocabularies."""
        return {
            "features_format": FEATURES_FORMAT,
            "n_items": self.n_items,
            "features": [
                {"name": f.spec.name, "kind": f.spec.kind, "dim": f.dim, "vocab": f.vocab} for f in self.features
            ],
        }

    def save(self, folder: str | Path) -> list[str]:
        """Write ``item_features.json`` and the arrays into ``folder``; returns the file names written."""
        folder = Path(folder)
        (folder / FEATURES_FILE).write_text(json.dumps(self.describe()))
        written = [FEATURES_FILE]
        for feature in self.features:
            for part in ("indptr", "values", "vectors"):
                value = getattr(feature, part)
                if value is not None:
                    name = f"feature_{feature.spec.name}_{part}.npy"
                    np.save(folder / name, np.ascontiguousarray(value), allow_pickle=False)
                    written.append(name)
        return written


def load_item_features(folder: str | Path, mmap: bool = True) -> ItemFeatures | None:
    """The features saved in ``folder``, or None when it has none."""
    folder = Path(folder)
    file = folder / FEATURES_FILE
    if not file.exists():
        return None
    described = json.loads(file.read_text())
    if described.get("features_format") != FEATURES_FORMAT:
        raise ValueError(f"{file}: features_format {described.get('features_format')} != {FEATURES_FORMAT}")
    features = []
    for entry in described["features"]:
        spec = FeatureSpec(entry["name"], entry["kind"])
        arrays = {}
        for part in ("indptr", "values", "vectors"):
            path = folder / f"feature_{spec.name}_{part}.npy"
            if path.exists():
                arrays[part] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        features.append(EncodedFeature(spec, list(entry.get("vocab", [])), **arrays))
    return ItemFeatures(features)


# ---------------------------------------------------------------- reading the user's table
@dataclass
class ItemTable:
    """The rows of a user's item table: original ids and each declared column's raw values, by row."""

    path: Path
    ids: list[str]
    columns: dict[str, list]  # name -> per row: list[str] (categorical/multi) or np.ndarray | None (dense)
    specs: list[FeatureSpec]

    def where(self, row: int) -> str:
        """'FILE: line N' (text tables, header = line 1) or 'FILE: row N' (Parquet), for error messages."""
        return f"{self.path}: row {row + 1}" if self.path.suffix == ".parquet" else f"{self.path}: line {row + 2}"


def read_item_table(path: str | Path, specs: list[FeatureSpec], id_column: str = "item_id") -> ItemTable:
    """Read ``path`` (.tsv/.csv, optionally .gz, or .parquet) and parse the declared columns; one-line errors
    naming the file and line for a missing column, an empty or repeated id, or a vector of the wrong length."""
    path = Path(path)
    table = _read_arrow(path)
    missing = [c for c in [id_column, *(s.name for s in specs)] if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; the table has {table.column_names}")
    ids = [None if v is None else str(v).strip() for v in table.column(id_column).to_pylist()]
    seen: dict[str, int] = {}
    out = ItemTable(path, [], {}, specs)
    for row, item in enumerate(ids):
        if not item:
            raise ValueError(f"{out.where(row)}: empty {id_column}")
        if item in seen:
            raise ValueError(f"{out.where(row)}: item {item!r} repeats {out.where(seen[item]).split(': ')[-1]}")
        seen[item] = row
    out.ids = ids  # type: ignore[assignment]
    for spec in specs:
        raw = table.column(spec.name).to_pylist()
        out.columns[spec.name] = _dense_column(out, spec, raw) if spec.kind == "dense" else _value_column(spec, raw)
    return out


def _read_arrow(path: Path) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"{path}: item table not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pyarrow.csv as pcsv

    delimiter = "\t" if ".tsv" in path.suffixes or ".tab" in path.suffixes else ","
    try:  # every column as text: ids keep their spelling, numbers are parsed here with row numbers
        parse = pcsv.ParseOptions(delimiter=delimiter)
        header = pcsv.open_csv(path, parse_options=parse).schema.names
        types = pcsv.ConvertOptions(column_types={c: pa.string() for c in header})
        return pcsv.read_csv(path, parse_options=parse, convert_options=types)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: {str(exc).splitlines()[0]}") from None


def _value_column(spec: FeatureSpec, raw: list) -> list[list[str]]:
    """Per row, the value texts ('|'-separated in text tables; a list in Parquet); categorical keeps one."""
    rows = []
    for value in raw:
        if value is None:
            values: list[str] = []
        elif isinstance(value, list):
            values = [str(v).strip() for v in value if v is not None and str(v).strip()]
        else:
            values = (
                [v.strip() for v in str(value).split("|") if v.strip()]
                if spec.kind == "multi"
                else [str(value).strip()]
            )
        rows.append(values[:1] if spec.kind == "categorical" else values)
    return rows


def _dense_column(table: ItemTable, spec: FeatureSpec, raw: list) -> list[np.ndarray | None]:
    """Per row, the vector (None = missing); every present vector must have the first one's length."""
    rows: list[np.ndarray | None] = []
    dim = None
    for row, value in enumerate(raw):
        if value is None or (isinstance(value, str) and not value.strip()):
            rows.append(None)
            continue
        try:
            parts = value if isinstance(value, list) else str(value).split("|")
            vector = np.asarray([float(v) for v in parts], dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{table.where(row)}: feature {spec.name!r} is not a list of numbers") from None
        if not np.isfinite(vector).all():
            raise ValueError(f"{table.where(row)}: feature {spec.name!r} holds a NaN or infinite value")
        dim = len(vector) if dim is None else dim
        if len(vector) != dim:
            raise ValueError(f"{table.where(row)}: feature {spec.name!r} has {len(vector)} values, expected {dim}")
        rows.append(vector)
    return rows


def encode_item_table(
    table: ItemTable, item_index: dict[str, int], n_items: int, like: ItemFeatures | None = None
) -> ItemFeatures:
    """Encode ``table`` for internal ids 0..n_items (``item_index``: original id -> internal id). Vocabularies
    are built from the table, or taken from ``like`` (a bundle's, so that old value ids keep their rows:
    values it does not know count as missing). Table rows whose id is not in ``item_index`` are skipped."""
    row_of_item = np.full(n_items + 1, -1, dtype=np.int64)
    for row, item in enumerate(table.ids):
        internal = item_index.get(item)
        if internal is not None:
            row_of_item[internal] = row
    features = []
    report = {"table_rows": len(table.ids), "items_with_row": int((row_of_item[1:] >= 0).sum())}
    for spec in table.specs:
        column = table.columns[spec.name]
        if spec.kind == "dense":
            features.append(_encode_dense(spec, column, row_of_item, like))
        else:
            known = like.get(spec.name).vocab if like is not None else None
            feature, unseen = _encode_values(spec, column, row_of_item, known)
            features.append(feature)
            report[f"{spec.name}_unseen_values"] = unseen
    report["items_without_row"] = n_items - report["items_with_row"]
    return ItemFeatures(features, report)


def _encode_values(
    spec: FeatureSpec, column: list[list[str]], row_of_item: np.ndarray, vocab: list[str] | None
) -> tuple[EncodedFeature, int]:
    if vocab is None:
        counts = Counter(v for row in row_of_item[row_of_item >= 0] for v in column[row])
        vocab = sorted(counts, key=lambda v: (-counts[v], v))
    number = {v: i + 1 for i, v in enumerate(vocab)}
    lengths, values, unseen = [], [], 0
    for row in row_of_item:
        ids = [number.get(v, MISSING) for v in column[row]] if row >= 0 else []
        unseen += sum(1 for i in ids if i == MISSING)
        ids = [i for i in ids if i != MISSING] or [MISSING]
        lengths.append(len(ids))
        values.extend(ids)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return EncodedFeature(spec, list(vocab), indptr, np.asarray(values, dtype=np.int64)), unseen


def _encode_dense(
    spec: FeatureSpec, column: list[np.ndarray | None], row_of_item: np.ndarray, like: ItemFeatures | None
) -> EncodedFeature:
    present = [v for v in column if v is not None]
    dim = like.get(spec.name).dim if like is not None else (len(present[0]) if present else 0)
    if dim == 0:
        raise ValueError(f"item feature {spec.name!r}: no row has a vector")
    vectors = np.zeros((len(row_of_item), dim), dtype=np.float32)
    for item, row in enumerate(row_of_item):
        value = column[row] if row >= 0 else None
        if value is not None:
            if len(value) != dim:
                raise ValueError(f"item feature {spec.name!r}: vectors of length {len(value)}, the model's have {dim}")
            vectors[item] = value
    return EncodedFeature(spec, vectors=vectors)
