"""Several worker processes behind one port: ``mirec serve BUNDLE --workers N``.

N worker processes (spawned, so nothing of the parent's torch state is forked) each bind the port with
SO_REUSEPORT, so the kernel spreads new connections evenly over them (one shared listening socket let the first
worker to wake take most of a burst of connections: measured, two workers used one core); each loads the bundle,
runs its own event loop, micro-batcher and torch thread, so N requests are computed at once on N cores where one
process is held to about one by the GIL. A worker that dies is started again; SIGTERM or Ctrl-C stops them all.

What the workers share lives in a control folder mirec creates for the server's lifetime (removed at exit):

- ``config.json`` (mode 0600: it holds the token): the bundle, settings, device, threads, vector store;
- ``reload.json``: a generation number and the bundle path. ``/admin/reload`` on any worker loads and verifies the
  bundle there, then bumps the generation; every other worker polls the file (every 0.2 s) and reloads the same
  path in the same way, so a reload reaches all workers, each swapping its model whole between requests. SIGHUP
  to the supervisor is passed to every worker, which reloads its current bundle path (as one process does).
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
import time
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
    from mirec.serving.bundle import verify_bundle

    verify_bundle(bundle)  # fail here, once, before any worker starts (several workers serve bundles only)
    control = Path(tempfile.mkdtemp(prefix="mirec-serve-"))
    try:
        (control / "metrics").mkdir()
        config = {"settings": asdict(settings), "device": device, "threads": threads, "store": store}
        config |= {"host": host, "port": port}
        write_json(control / "config.json", config, mode=0o600)
        write_json(control / "reload.json", {"generation": 0, "path": str(Path(bundle).resolve())})
        supervise(control, workers)
    finally:
        shutil.rmtree(control, ignore_errors=True)  # made by mkdtemp above: nothing of the user's is in it


def supervise(control: Path, workers: int) -> None:
    """Start the workers, start again any that dies, pass SIGHUP on, stop them all on SIGTERM / SIGINT."""
    import multiprocessing
    import signal
    import threading

    from prometheus_client import multiprocess

    config = json.loads((control / "config.json").read_text())
    reuse_port_socket(config["host"], config["port"]).close()  # a port taken by another program fails here
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    deaths: list[float] = []
    processes = [context.Process(target=run_worker, args=(str(control),)) for _ in range(workers)]
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: [os.kill(p.pid, signal.SIGHUP) for p in processes if p.is_alive()])
    for process in processes:
        process.start()
    try:
        while not stop.wait(0.5):
            for i, process in enumerate(processes):
                if process.exitcode is not None:  # died: its live gauges go, a new worker takes its place
                    multiprocess.mark_process_dead(process.pid, str(control / "metrics"))
                    deaths = [t for t in deaths if t > time.monotonic() - 60] + [time.monotonic()]
                    if len(deaths) > 2 * workers:
                        raise RuntimeError(f"mirec serve: workers died {len(deaths)} times in a minute; stopping")
                    processes[i] = context.Process(target=run_worker, args=(str(control),))
                    processes[i].start()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(30)


def run_worker(control: str) -> None:
    """One worker: its app on its own SO_REUSEPORT socket of the shared port."""
    import signal

    import uvicorn

    os.environ[CONTROL_ENV], os.environ[METRICS_ENV] = control, str(Path(control) / "metrics")
    config = json.loads((Path(control) / "config.json").read_text())
    app = worker_app()
    sock = reuse_port_socket(config["host"], config["port"])
    sock.listen(2048)
    signal.signal(signal.SIGHUP, lambda *_: threading_reload(app))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def reuse_port_socket(host: str, port: int) -> Any:
    """A TCP socket bound to (host, port) with SO_REUSEPORT: every worker binds its own, the kernel balances."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given: asyncio sets TCP_NODELAY on accepted sockets only when proto is IPPROTO_TCP (else Nagle and
    # delayed ACKs add 40 ms to every keep-alive answer, measured)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def threading_reload(app: Any) -> None:
    """SIGHUP in a worker: reload its current bundle path in a thread, one line on stderr (this worker only; the
    others get the same signal from the supervisor)."""
    import threading

    from mirec.serving.app import reload_and_report

    who = f"mirec serve (worker {os.getpid()})"
    threading.Thread(target=reload_and_report, args=(app.state.reload_here, who), daemon=True).start()


def worker_app() -> Any:
    """The app of one worker process, built from the control folder."""
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
