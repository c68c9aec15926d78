"""Several worker processes behind one port: ``mirec serve BUNDLE --workers N``.

uvicorn's process supervisor spawns N workers on one listening socket (the kernel spreads connections among
them); each loads the bundle (the OS shares the file pages), runs its own event loop, micro-batcher and torch
thread, so N requests are computed at once on N cores where one process is held to about one by the GIL.

What the workers share lives in a control folder mirec creates for the server's lifetime (removed at exit):

- ``config.json`` (mode 0600: it holds the token): the bundle, settings, device, threads, vector store;
- ``reload.json``: a generation number and the bundle path. ``/admin/reload`` on any worker loads and verifies the
  bundle there, then bumps the generation; every other worker polls the file (every 0.2 s) and reloads the same
  path in the same way, so a reload reaches all workers, each swapping its model whole between requests. SIGHUP
  to the supervisor replaces the workers one by one (uvicorn's rolling restart); new workers read the current
  path from ``reload.json``.
- ``metrics/``: prometheus_client's multiprocess mode, so ``/metrics`` on any worker reports the sums over all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

CONTROL_ENV = "MIREC_SERVE_CONTROL"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
POLL_SECONDS = 0.2


class SharedReload:
    """The reload generation every worker follows (``reload.json`` in the control folder, updated atomically
    under a lock)."""

    def __init__(self, control: Path):
        self.file, self.lock = control / "reload.json", control / "reload.lock"
        self.seen = self.read()[0]

    def read(self) -> tuple[int, str]:
        state = json.loads(self.file.read_text())
        return int(state["generation"]), str(state["path"])

    def publish(self, path: str) -> None:
        """A new generation for ``path``, after this worker has loaded it (so it does not reload again)."""
        with open(self.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.read()[0] + 1
            write_json(self.file, {"generation": generation, "path": path})
            self.seen = generation

    def changed(self) -> str | None:
        """The path of a generation this worker has not loaded yet, or None."""
        generation, path = self.read()
        if generation <= self.seen:
            return None
        self.seen = generation
        return path

    async def follow(self, reload: Any) -> None:
        """Poll for new generations and ``reload(path)`` each in a thread; a failure keeps the old model (the
        service records it in /metrics and /readyz)."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            path = self.changed()
            if path is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(reload, path)


def write_json(file: Path, content: dict, mode: int = 0o644) -> None:
    """Write ``file`` atomically (a rename), with ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    with os.fdopen(fd, "w") as out:
        json.dump(content, out)
    os.chmod(tmp, mode)
    os.replace(tmp, file)


def serve_workers(
    bundle: str | Path,
    *,
    workers: int,
    host: str,
    port: int,
    settings: Any,
    device: str,
    threads: int,
    store: str | None,
) -> None:
    """Run ``workers`` processes serving ``bundle`` until stopped (see the module docstring)."""
    import uvicorn

    from mirec.serving.bundle import verify_bundle

    verify_bundle(bundle)  # fail here, once, before any worker starts (several workers serve bundles only)
    control = Path(tempfile.mkdtemp(prefix="mirec-serve-"))
    try:
        (control / "metrics").mkdir()
        config = {"settings": asdict(settings), "device": device, "threads": threads, "store": store}
        write_json(control / "config.json", config, mode=0o600)
        write_json(control / "reload.json", {"generation": 0, "path": str(Path(bundle).resolve())})
        os.environ[CONTROL_ENV], os.environ[METRICS_ENV] = str(control), str(control / "metrics")
        uvicorn.run(
            "mirec.serving.workers:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
    finally:
        shutil.rmtree(control, ignore_errors=True)  # made by mkdtemp above: nothing of the user's is in it


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory), built from the control folder."""
    import torch

    from mirec.serving.app import ServeSettings, create_app
    from mirec.serving.bundle import load_bundle

    control = Path(os.environ[CONTROL_ENV])
    config = json.loads((control / "config.json").read_text())
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    index_of = None
    if config["store"]:
        from mirec.retrieval import serve_from_store

        index_of = partial(serve_from_store, uri=config["store"])

    def loader(path: str | Path) -> Any:
        served = load_bundle(path, config["device"])
        return served if index_of is None else index_of(served)

    shared = SharedReload(control)
    path = shared.read()[1]
    return create_app(loader(path), ServeSettings(**config["settings"]), path, loader=loader, shared=shared)


__all__ = ["serve_workers", "worker_app", "SharedReload"]
