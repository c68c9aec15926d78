"""Vector databases as mirec's item index, beside the bundle's own Faiss index, measured in one run.

For each catalogue and engine: the bulk-load time (create, insert, index), users/s of batch retrieval (K interest
vectors per user in one call per batch of users, top-50 per interest, exact re-scoring; the merge is the same
for every engine and not timed), and the overlap of each interest's top 50 with exact search.

    python benchmarks/bench_stores.py                         # Beauty-sized catalogue (12,101 x 64), all engines
    python benchmarks/bench_stores.py --items 1000000 --budget-s 600
    python benchmarks/bench_stores.py --bundle BUNDLE         # a trained bundle's own item vectors

Catalogues without a bundle are synthetic: unit directions times log-normal norms (sigma 0.4), d = 64; queries
are Gaussian. Each engine gets ``--budget-s`` seconds for its load; one that does not finish is reported as such.
PostgreSQL + pgvector: ``--postgres URI``, or pgserver's bundled server started here.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mirec.retrieval import ItemTable, open_store  # noqa: E402
from mirec.serving.index import IndexParams, ItemIndex, overlap  # noqa: E402


def synthetic(n: int, dim: int, seed: int = 0) -> ItemTable:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors *= rng.lognormal(0.0, 0.4, (n, 1)).astype(np.float32)
    meta = {"model_version": "bench", "dim": dim, "n_items": n}
    return ItemTable(np.array([f"i{i}" for i in range(n)]), vectors, np.full(n, -1, np.int64), meta)


def of_bundle(path: str) -> ItemTable:
    from mirec.serving.bundle import load_bundle

    return ItemTable.of_serving(load_bundle(path))


def time_search(index, queries: torch.Tensor, batch: int, seconds: float) -> tuple[float, torch.Tensor, int]:
    """users/s over batches of ``batch`` users until all are done or ``seconds`` pass; (users/s, ids, users)."""
    found, done, started = [], 0, time.perf_counter()
    while done < len(queries) and (time.perf_counter() - started < seconds or done == 0):
        found.append(index.search(queries[done : done + batch], 50)[1])
        done += len(found[-1])
    return done / (time.perf_counter() - started), torch.cat(found), done


def measure(name: str, make, table: ItemTable, queries, exact_ids, args) -> dict:
    started = time.perf_counter()
    index = make()
    load_s = time.perf_counter() - started
    users_s, ids, users = time_search(index, queries, args.batch, args.search_s)
    if hasattr(index, "close"):
        index.close()
    return {
        "engine": name,
        "load_s": load_s,
        "users_s": users_s,
        "users": users,
        "overlap": overlap(ids, exact_ids[:users]),
    }


def store_factory(uri: str, table: ItemTable, padded: torch.Tensor):
    def make():
        store = open_store(uri)
        store.load(table, replace=True)
        return store.attach(padded, table.model_version)

    return make


def run_engine(queue, name, uri_or_params, table, queries, exact_ids, args) -> None:
    """One engine in a child process, so a load over the budget can be stopped whole."""
    torch.set_num_threads(args.threads)
    padded = torch.cat([torch.zeros(1, table.dim), torch.from_numpy(table.vectors)])
    if isinstance(uri_or_params, IndexParams):
        make = lambda: ItemIndex(padded, uri_or_params)  # noqa: E731
    else:
        make = store_factory(uri_or_params, table, padded)
    queue.put(measure(name, make, table, queries, exact_ids, args))


def engines(args, workdir: Path) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [
        ("faiss exact (bundle default)", IndexParams(kind="exact")),
        ("faiss hnsw ip M32 ef128", IndexParams(kind="hnsw", metric="ip", hnsw_ef_search=128)),
    ]
    wanted = set(args.engines.split(","))
    if "milvus" in wanted:
        out += [
            ("milvus-lite flat", f"milvus://{workdir / 'flat.db'}"),
            ("milvus-lite hnsw M16", f"milvus://{workdir / 'hnsw.db'}?index=hnsw&ef_search=128"),
        ]
    if "qdrant" in wanted:
        out.append(("qdrant local (memory, exact)", "qdrant:///:memory:"))
    if "pgvector" in wanted and args.postgres:
        sep = "&" if "?" in args.postgres else "?"
        out += [
            ("pgvector flat", f"{args.postgres}{sep}collection=bench_flat"),
            ("pgvector hnsw M16", f"{args.postgres}{sep}collection=bench_hnsw&index=hnsw&ef_search=128"),
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=12_101, help="synthetic catalogue size (Beauty: 12,101)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--bundle", default=None, help="use this bundle's item vectors instead")
    parser.add_argument("--users", type=int, default=512, help="users with K = 4 interests each")
    parser.add_argument("--batch", type=int, default=64, help="users per search call")
    parser.add_argument("--engines", default="milvus,qdrant,pgvector")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL conninfo (default: start pgserver's)")
    parser.add_argument("--budget-s", type=float, default=300, help="most seconds an engine may take to load")
    parser.add_argument("--search-s", type=float, default=20, help="most seconds of search per engine")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    table = of_bundle(args.bundle) if args.bundle else synthetic(args.items, args.dim)
    rng = np.random.default_rng(1)
    queries = torch.from_numpy(rng.standard_normal((args.users, 4, table.dim), dtype=np.float32))
    padded = torch.cat([torch.zeros(1, table.dim), torch.from_numpy(table.vectors)])
    exact_ids = ItemIndex(padded).search(queries, 50)[1]
    print(f"catalogue {len(table):,} x {table.dim}; {args.users} users x K 4; top 50; {args.threads} thread(s)")
    server = None
    if "pgvector" in args.engines and not args.postgres:
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="mirec-bench-pg-"), cleanup_mode="stop")
        args.postgres = server.get_uri()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the PostgreSQL server below
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="mirec-bench-stores-") as tmp:
            for name, target in engines(args, Path(tmp)):
                rows.append(run_with_budget(name, target, table, queries, exact_ids, args))
                print_row(rows[-1], rows[0])
    finally:
        if server is not None:
            server.cleanup()


def run_with_budget(name, target, table, queries, exact_ids, args) -> dict:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=run_engine, args=(queue, name, target, table, queries, exact_ids, args))
    child.start()
    child.join(args.budget_s + args.search_s + 30)
    if child.is_alive():
        child.kill()
        return {"engine": name, "error": f"not done within {args.budget_s:.0f} s of load + the search time"}
    return queue.get() if not queue.empty() else {"engine": name, "error": f"failed (exit {child.exitcode})"}


def print_row(row: dict, reference: dict) -> None:
    if "error" in row:
        print(f"{row['engine']:<32} {row['error']}", flush=True)
        return
    ratio = row["users_s"] / reference["users_s"] if "users_s" in reference else float("nan")
    print(
        f"{row['engine']:<32} load {row['load_s']:8.2f} s   {row['users_s']:9.1f} users/s "
        f"({ratio:5.2f}x faiss exact, {row['users']} users)   overlap@50 {row['overlap']:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
