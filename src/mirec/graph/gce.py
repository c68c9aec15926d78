"""GIMIRec's Global Context Extraction (GCE), section 4.2, Eq. 1-7, as a module any model can use.

``build_cooccurrence`` turns time-sorted CSR sequences into the normalised item graph
A = D^{-1/2} (I + sum_k w_k (q^k + q^k^T)) D^{-1/2}; ``build_global_context`` does it for a
``PreparedDataset`` without reading valid/test targets; ``GlobalContext`` is the ``nn.Module``
``(ids, item_weight) -> rows of A @ item_weight`` (E_global = A E_item, Eq. 7).

Decisions where the paper is silent (docs/models.md section 6; each one is a switch or documented):

* Self-pairs (the same item at n and n+k): kept by default (``GraphConfig.self_pairs = True``), as Eq. 1-4
  define pairs by position, not by item identity; they add 2 q^k_ii to the diagonal of A' on top of I (a
  repeated item is a strong signal of its own). ``self_pairs = False`` drops them.
* Padding row/column 0 never occurs in a sequence; the identity of Eq. 5 covers it, so A[0, 0] = 1 and
  A[0, j] = A[j, 0] = 0 for j > 0: E_global[0] = E_item[0] and no real item mixes with padding.
* Eq. 1 keeps dt <= L_time (inclusive, up to a 1e-9-day tolerance for float day conversions).
  Without the threshold (GIMIRec-INT) the normalised interval of Eq. 2 is clipped to [0, 1]
  ("the time interval ... is normalized to [0, 1]"), so weights stay in [b, a + b].
* count_pairs = False (GIMIRec-IN): q^k_uv = 1 when the directed pair occurs at least once.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from mirec.config import GraphConfig
from mirec.data.dataset import SECONDS_PER_DAY
from mirec.utils import atomic_path

DT_TOLERANCE_DAYS = 1e-9  # float error of seconds / 86400 must not drop a pair exactly L_time apart
FORMAT = "mirec.graph.GlobalContext/1"


@dataclass
class BuildInfo:
    """Counts recorded while building A (per hop, before symmetrising and merging the hops)."""

    pairs_per_hop: list[int] = field(default_factory=list)  # kept pair occurrences in R^k (Eq. 1)
    dropped_per_hop: list[int] = field(default_factory=list)  # occurrences beyond L_time (or self-pairs)
    self_pairs_per_hop: list[int] = field(default_factory=list)  # i_n == i_{n+k}, before any filter
    nnz_per_hop: list[int] = field(default_factory=list)  # distinct directed pairs in q^k (Eq. 3)
    nnz_a_prime: int = 0  # non-zeros of A' (Eq. 5), identity included
    n_interactions: int = 0
    n_sequences: int = 0


def _check_config(config: GraphConfig) -> list[float]:
    hop_weights = [float(w) for w in config.hop_weights]
    if not config.l_time > 0:
        raise ValueError(f"GraphConfig.l_time must be > 0 days, got {config.l_time!r}")
    if config.a < 0 or config.b < 0:
        raise ValueError(f"GraphConfig.a and .b must be >= 0 (Eq. 2 weights), got a={config.a!r} b={config.b!r}")
    if any(not np.isfinite(w) or w < 0 for w in hop_weights):
        raise ValueError(f"GraphConfig.hop_weights must be finite and >= 0 (Eq. 5), got {config.hop_weights!r}")
    return hop_weights


def _check_inputs(indptr: np.ndarray, items: np.ndarray, days: np.ndarray, n_items: int) -> None:
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0:
        raise ValueError("build_cooccurrence: indptr must be a 1-d CSR offset array starting at 0")
    if np.any(np.diff(indptr) < 0):
        raise ValueError("build_cooccurrence: indptr must be non-decreasing")
    if indptr[-1] != len(items) or len(items) != len(days):
        raise ValueError(
            f"build_cooccurrence: indptr[-1]={indptr[-1]}, len(items)={len(items)}, "
            f"len(timestamps_days)={len(days)} must all be equal"
        )
    if len(items) == 0:
        return
    lo, hi = int(items.min()), int(items.max())
    if lo < 1 or hi > n_items:
        bad = int(np.flatnonzero((items < 1) | (items > n_items))[0])
        raise ValueError(
            f"build_cooccurrence: item ids must be in 1..{n_items} (0 is padding); "
            f"interaction {bad} has item {int(items[bad])}"
        )
    if not np.all(np.isfinite(days)):
        bad = int(np.flatnonzero(~np.isfinite(days))[0])
        raise ValueError(f"build_cooccurrence: timestamp of interaction {bad} is not finite ({days[bad]!r})")
    backwards = np.diff(days) < 0
    backwards[indptr[1:-1][indptr[1:-1] > 0] - 1] = False  # a drop across a user boundary is fine
    if backwards.any():
        pos = int(np.flatnonzero(backwards)[0]) + 1
        row = int(np.searchsorted(indptr, pos, side="right") - 1)
        raise ValueError(
            f"build_cooccurrence: sequence {row} is not time-sorted at interaction {pos} "
            f"({days[pos - 1]!r} then {days[pos]!r} days)"
        )


def build_cooccurrence(
    indptr: np.ndarray,
    items: np.ndarray,
    timestamps_days: np.ndarray,
    n_items: int,
    config: GraphConfig,
    info: BuildInfo | None = None,
) -> sp.csr_matrix:
    """Normalised GCE adjacency A (GIMIRec Eq. 1-6) as a float32 CSR matrix of shape (n_items+1)^2.

    ``indptr`` / ``items`` / ``timestamps_days`` are CSR sequences, time-sorted within each sequence,
    item ids in 1..n_items, timestamps in (fractional) days. Pass a ``BuildInfo`` to receive per-hop counts.
    Vectorised hop by hop: pairs come from index arithmetic on the CSR, one COO->CSR per hop.
    """
    hop_weights = _check_config(config)
    indptr = np.asarray(indptr, dtype=np.int64)
    items = np.asarray(items)
    days = np.asarray(timestamps_days, dtype=np.float64)
    _check_inputs(indptr, items, days, n_items)
    items = items.astype(np.int32, copy=False)
    size = n_items + 1
    n = len(items)
    info = info if info is not None else BuildInfo()
    info.n_interactions, info.n_sequences = n, len(indptr) - 1

    lengths = np.diff(indptr)
    # rem[n] = positions left in n's sequence after n, so <i_n, i_{n+k}> exists iff rem[n] >= k
    rem = (np.repeat(indptr[1:], lengths) - np.arange(1, n + 1, dtype=np.int64)).astype(np.int32)
    a_prime = sp.identity(size, dtype=np.float64, format="csr")  # Eq. 5: I + ...
    for k, hop_weight in enumerate(hop_weights, start=1):
        a_k = _hop_adjacency(k, rem, items, days, size, config, info)
        if hop_weight != 0.0:
            a_prime = a_prime + hop_weight * a_k  # Eq. 5: A' = I + sum_k w_k A^k
        del a_k
    a_prime = a_prime.tocsr()
    a_prime.sum_duplicates()
    a_prime.sort_indices()
    info.nnz_a_prime = int(a_prime.nnz)
    return _symmetric_normalised(a_prime, size)


def _hop_adjacency(
    k: int, rem: np.ndarray, items: np.ndarray, days: np.ndarray, size: int, config: GraphConfig, info: BuildInfo
) -> sp.csr_matrix:
    """A^k (Eq. 1-4): the k-hop pairs <i_n, i_{n+k}> within each sequence, weighted and symmetrised (float64)."""
    n, l_time = len(items), float(config.l_time)
    src = np.flatnonzero(rem[: n - k] >= k) if n > k else np.zeros(0, dtype=np.int64)
    dst = src + k
    dt = days[dst] - days[src]  # Eq. 1: the time interval of <i_n, i_{n+k}>
    keep = np.ones(len(src), dtype=bool)
    if config.use_threshold:
        keep &= dt <= l_time + DT_TOLERANCE_DAYS
    u, v = items[src], items[dst]
    same = u == v
    info.self_pairs_per_hop.append(int(same.sum()))
    if not config.self_pairs:
        keep &= ~same
    del src, dst, same
    u, v, dt = u[keep], v[keep], dt[keep]
    info.pairs_per_hop.append(len(u))
    info.dropped_per_hop.append(int(len(keep) - len(u)))
    del keep
    if config.count_pairs:
        # Eq. 2: p = a (L_time - dt) / L_time + b, interval normalised to [0, 1]
        p = (config.a * np.clip((l_time - dt) / l_time, 0.0, 1.0) + config.b).astype(np.float32)
    else:
        p = np.ones(len(u), dtype=np.float32)
    del dt
    q = sp.coo_matrix((p, (u, v)), shape=(size, size)).tocsr()  # Eq. 3: duplicates summed
    del p, u, v
    if not config.count_pairs:
        q.data[:] = 1.0  # GIMIRec-IN: presence of the pair
    q.eliminate_zeros()
    info.nnz_per_hop.append(int(q.nnz))
    q = q.astype(np.float64)
    return q + q.T.tocsr()  # Eq. 4: A^k = q^k + q^k^T


def _symmetric_normalised(a_prime: sp.csr_matrix, size: int) -> sp.csr_matrix:
    """Eq. 6: A = D^{-1/2} A' D^{-1/2}, D = row sums of A' (>= 1 thanks to I), as float32 CSR."""
    d_inv_sqrt = 1.0 / np.sqrt(np.asarray(a_prime.sum(axis=1)).ravel())
    rows = np.repeat(np.arange(size, dtype=np.int64), np.diff(a_prime.indptr))
    a_prime.data *= d_inv_sqrt[rows] * d_inv_sqrt[a_prime.indices]
    out = sp.csr_matrix((a_prime.data.astype(np.float32), a_prime.indices, a_prime.indptr), shape=(size, size))
    out.has_sorted_indices = True
    return out


def build_global_context(dataset: Any, config: GraphConfig, build: Any = None) -> GlobalContext:
    """GCE graph of a ``PreparedDataset``: training users' full sequences + valid/test users' history only.
    ``build(indptr, items, days, n_items, config) -> A`` replaces this process's :func:`build_cooccurrence`
    (``mirec.graph.build_global_context`` passes the Spark builder for ``graph.engine = "spark"``)."""
    indptr, items, stamps = dataset.context_sequences()  # never the valid/test targets (docs/models.md 6)
    items = items.astype(np.int32)
    days = (stamps - (stamps.min() if len(stamps) else 0)) / SECONDS_PER_DAY  # GIMIRec Table 2: L_time in days
    del stamps
    n_items = dataset.n_id_items  # the items models train on (held-out and table-only items have no edge)
    info = BuildInfo()
    if build is not None:
        info.n_interactions, info.n_sequences = len(items), len(indptr) - 1
        matrix = build(indptr, items, days, n_items, config)
    else:
        matrix = build_cooccurrence(indptr, items, days, n_items, config, info=info)
    return GlobalContext(matrix, config, info)


def _config_dict(config: GraphConfig | dict[str, Any]) -> dict[str, Any]:
    return dict(config) if isinstance(config, dict) else asdict(config)


class GlobalContext(nn.Module):
    """E_global = A E_item (GIMIRec Eq. 7) with the fixed normalised A held as CSR buffers.

    ``forward(ids, item_weight)`` returns ``(A @ item_weight)[ids]`` with shape ``ids.shape + (d,)``.
    With gradients needed it computes only the rows of the unique ids (a small sparse [n_unique, n+1]
    matrix times ``item_weight``, so gradients reach ``item_weight`` as A^T grad). When no gradient is
    needed (``torch.no_grad``/``inference_mode``, or eval mode with an ``item_weight`` that does not require
    grad) it computes the full E_global once and reuses it while ``item_weight`` is unchanged
    (keyed on data_ptr, ``_version``, shape, dtype, device).
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor

    def __init__(
        self,
        matrix: sp.csr_matrix,
        config: GraphConfig | dict[str, Any] | None = None,
        info: BuildInfo | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        matrix = sp.csr_matrix(matrix)
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"GlobalContext: A must be square, got shape {matrix.shape}")
        matrix.sort_indices()
        self.size = int(matrix.shape[0])
        self.config = _config_dict(config) if config is not None else {}
        self.info = asdict(info) if isinstance(info, BuildInfo) else dict(info or {})
        # non-persistent: the graph is saved separately (graph.safetensors), not in model.safetensors
        self.register_buffer("indptr", torch.from_numpy(matrix.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("indices", torch.from_numpy(matrix.indices.astype(np.int64)), persistent=False)
        self.register_buffer("values", torch.from_numpy(matrix.data.astype(np.float32)), persistent=False)
        self._cache: Tensor | None = None
        self._cache_key: tuple[Any, ...] | None = None

    @property
    def n_items(self) -> int:
        return self.size - 1

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, nnz={self.nnz}, hops={len(self.config.get('hop_weights', []))}"

    def _sparse(self, crow: Tensor, col: Tensor, val: Tensor, n_rows: int) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(crow, col, val, (n_rows, self.size), check_invariants=False)

    def full(self, item_weight: Tensor) -> Tensor:
        """A @ item_weight for every item (differentiable in item_weight)."""
        self._check_weight(item_weight)
        a = self._sparse(self.indptr, self.indices, self.values.to(item_weight.dtype), self.size)
        return torch.sparse.mm(a, item_weight)

    def rows(self, ids: Tensor, item_weight: Tensor) -> Tensor:
        """(A @ item_weight)[ids] computing only the needed rows (differentiable in item_weight).

        The cost grows with the number of non-zeros of the unique rows (popular items have many
        neighbours); item_weight receives a dense gradient A[uniq]^T grad.
        """
        self._check_weight(item_weight)
        flat = ids.reshape(-1).to(self.indptr.device, torch.long)
        if flat.numel() == 0:
            return item_weight.new_zeros((*ids.shape, item_weight.shape[1]))
        if int(flat.min()) < 0 or int(flat.max()) >= self.size:
            raise IndexError(
                f"GlobalContext: ids must be in 0..{self.size - 1}, got range {int(flat.min())}..{int(flat.max())}"
            )
        uniq, inverse = torch.unique(flat, return_inverse=True)
        starts, ends = self.indptr[uniq], self.indptr[uniq + 1]
        counts = ends - starts
        crow = torch.zeros(len(uniq) + 1, dtype=torch.long, device=flat.device)
        torch.cumsum(counts, 0, out=crow[1:])
        total = int(crow[-1])
        # position of each gathered entry: starts[row] + (running index - crow[row])
        offsets = torch.repeat_interleave(starts - crow[:-1], counts, output_size=total)
        pos = offsets + torch.arange(total, device=flat.device)
        # one bag per unique id: sum_j A[id, j] E_item[j] (Eq. 7 restricted to the needed rows); embedding_bag
        # avoids materialising the [nnz_rows, d] gathered rows in the forward
        out = nn.functional.embedding_bag(
            self.indices[pos],
            item_weight,
            crow[:-1],
            mode="sum",
            per_sample_weights=self.values[pos].to(item_weight.dtype),
        )
        return out[inverse.to(out.device)].reshape(*ids.shape, item_weight.shape[1])

    def _check_weight(self, item_weight: Tensor) -> None:
        if item_weight.dim() != 2 or item_weight.shape[0] != self.size:
            raise ValueError(
                f"GlobalContext: item_weight must be [{self.size}, d] (n_items + 1 rows), "
                f"got {tuple(item_weight.shape)}"
            )
        if item_weight.device != self.values.device:
            raise ValueError(
                f"GlobalContext: item_weight is on {item_weight.device} but the graph is on "
                f"{self.values.device}; move the module with .to()"
            )

    def forward(self, ids: Tensor, item_weight: Tensor) -> Tensor:
        needs_grad = torch.is_grad_enabled() and item_weight.requires_grad
        if needs_grad:
            self._cache, self._cache_key = None, None
            return self.rows(ids, item_weight)
        return self.cached_full(item_weight)[ids.to(item_weight.device, torch.long)]

    def cached_full(self, item_weight: Tensor) -> Tensor:
        """Full E_global without gradient, recomputed only when item_weight changed."""
        if item_weight.is_inference():  # no version counter to key a cache on
            with torch.no_grad():
                return self.full(item_weight)
        key = (
            item_weight.data_ptr(),
            item_weight._version,
            tuple(item_weight.shape),
            item_weight.dtype,
            item_weight.device,
        )
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                self._cache = self.full(item_weight.detach())
            self._cache_key = key
        return self._cache

    def _apply(self, fn: Any, recurse: bool = True) -> GlobalContext:  # .to()/.cuda(): drop the cache
        self._cache, self._cache_key = None, None
        return super()._apply(fn, recurse)

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix(
            (self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
            shape=(self.size, self.size),
        )

    def save(self, path: str | Path) -> Path:
        """Write safetensors: indptr/indices/values + JSON metadata (config, build info); no pickle."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {
            "indptr": self.indptr.detach().cpu().contiguous(),
            "indices": self.indices.detach().cpu().contiguous(),
            "values": self.values.detach().cpu().contiguous(),
        }
        metadata = {
            "format": FORMAT,
            "size": str(self.size),
            "config": json.dumps(self.config, sort_keys=True),
            "info": json.dumps(self.info, sort_keys=True),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> GlobalContext:
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no saved global context graph")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path}: not a GlobalContext file (format {metadata.get('format')!r})")
            arrays = {name: f.get_tensor(name).numpy() for name in ("indptr", "indices", "values")}
        size = int(metadata["size"])
        matrix = sp.csr_matrix((arrays["values"], arrays["indices"], arrays["indptr"]), shape=(size, size))
        module = cls(matrix, json.loads(metadata["config"]), json.loads(metadata["info"]))
        return module.to(device)


def graph_stats(
    context: GlobalContext | sp.csr_matrix,
    item_original_ids: np.ndarray | None = None,
    top_item: int | str | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """Size, per-hop counts, neighbour-count distribution and the top-k neighbours of ``top_item``.

    ``top_item``: an internal id (int) or an original id (str, looked up in ``item_original_ids``).
    Degrees count the off-diagonal non-zeros (neighbours) of the item rows 1..n_items.
    """
    matrix = context.to_scipy() if isinstance(context, GlobalContext) else sp.csr_matrix(context)
    info = context.info if isinstance(context, GlobalContext) else {}
    size = matrix.shape[0]
    row_nnz = np.diff(matrix.indptr)
    diag_nz = (matrix.diagonal() != 0).astype(np.int64)
    degree = (row_nnz - diag_nz)[1:]
    stats: dict[str, Any] = {
        "n_items": size - 1,
        "nnz": int(matrix.nnz),
        "nnz_offdiagonal": int(matrix.nnz - diag_nz.sum()),
        "pairs_per_hop": info.get("pairs_per_hop"),
        "dropped_per_hop": info.get("dropped_per_hop"),
        "self_pairs_per_hop": info.get("self_pairs_per_hop"),
        "nnz_per_hop": info.get("nnz_per_hop"),
    }
    if len(degree):
        pct = np.percentile(degree, [10, 25, 50, 75, 90, 99])
        stats["degree"] = {
            "min": int(degree.min()),
            "median": float(np.median(degree)),
            "mean": float(degree.mean()),
            "max": int(degree.max()),
            "isolated": int((degree == 0).sum()),
            "percentiles": {f"p{q}": float(v) for q, v in zip((10, 25, 50, 75, 90, 99), pct, strict=True)},
        }
    if top_item is not None:
        if isinstance(top_item, str):
            if item_original_ids is None:
                raise ValueError("graph_stats: an original top_item id needs item_original_ids")
            hits = np.flatnonzero(np.asarray(item_original_ids[1:]).astype(str) == top_item)
            if len(hits) == 0:
                raise KeyError(f"graph_stats: item {top_item!r} is not in item_original_ids")
            item = int(hits[0]) + 1
        else:
            item = int(top_item)
        if not 1 <= item < size:
            raise IndexError(f"graph_stats: top_item must be in 1..{size - 1}, got {item}")
        lo, hi = matrix.indptr[item], matrix.indptr[item + 1]
        cols, vals = matrix.indices[lo:hi], matrix.data[lo:hi]
        other = cols != item
        cols, vals = cols[other], vals[other]
        order = np.lexsort((cols, -vals))[:k]  # by weight, ties by id
        name = (lambda i: str(item_original_ids[i])) if item_original_ids is not None else int
        stats["top_item"] = name(item)
        stats["self_weight"] = float(matrix[item, item])
        stats["neighbours"] = [(name(int(cols[j])), float(vals[j])) for j in order]
    return stats
