"""Small shared helpers: atomic writes, device choice, seeding."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `mirec prepare` never loads it
    import torch


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if Path(tmp).exists():  # mkstemp makes 0600 files: give the usual umask-based mode instead
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: a prepared folder should be as readable as any other
    try:
        yield tmp
        follow_umask(tmp)
        if path.exists():
            if exchange_paths(tmp, path):  # one atomic step: the old folder now sits at the temporary name
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = path.with_name(f".{path.name}.old-{os.getpid()}")  # no renameat2: two renames
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def follow_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the umask's mode (writers such as safetensors make 0600 files)."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return result == 0


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks (inputs may be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_format_json(
    file: str | Path, key: str, expected: int, missing: str, error: type[Exception] = ValueError
) -> dict:
    """A JSON file that names its format version under ``key``; one-line errors naming the file when it is
    missing (``missing`` says what the file should have been), not JSON, or of another version."""
    file = Path(file)
    if not file.exists():
        raise error(f"{file}: {missing}")
    try:
        payload = json.loads(file.read_text())
    except ValueError as exc:
        raise error(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get(key) != expected:
        found = payload.get(key) if isinstance(payload, dict) else None
        raise error(f"{file}: {key} {found!r}, expected {expected}")
    return payload


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') data to disk, so a rename after it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LockedError(RuntimeError):
    """Another process holds the lock of a run folder or a dataset output."""


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` for the block; fail at once, naming the holder's PID
    (``wait=True``: block until the holder is done instead).

    The kernel releases the lock when its holder dies (even by kill -9). The file is removed on release while
    still locked; a process that opened it before the removal sees, once it gets the lock, that the path no
    longer names its file and starts over, so two processes never both hold "the" lock.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockedError(
                f"{what} is in use by another mirec process (PID {holder}, lock {lock_file}); "
                "wait for it to finish or stop it"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we waited for removed this file: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)
        os.close(fd)  # closing releases the flock


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"20,50"`` -> [20, 50]; anything else is a one-line error naming the flag."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 20,50") from None


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """torch threads for each of ``jobs`` processes sharing this machine: more threads than cores makes OpenMP's
    spinning threads crawl (two 2-thread runs on 2 cores ran 25x slower than two 1-thread runs)."""
    return max(1, usable_cpus() // max(jobs, 1))
