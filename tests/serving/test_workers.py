"""mirec serve --workers N: one port, N processes, metrics summed over them, a reload reaching every worker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mirec.serving.bundle import export_bundle
from mirec.serving.index import IndexParams
from tests.conftest import free_port, wait_until_healthy

AUTH = {"Authorization": "Bearer abc"}


def metadata_of_fresh_connections(port: int, tries: int = 60) -> dict[int, str]:
    """{worker pid: index_version} seen over ``tries`` new connections (the kernel spreads them)."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        with httpx.Client(timeout=10) as client:  # a new connection each time
            answer = client.get(f"http://127.0.0.1:{port}/v1/metadata", headers=AUTH).json()
            seen[answer["worker"]] = answer["manifest"]["index_version"]
    return seen


def requests_counted(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH, timeout=10).text
    pattern = r'^mirec_requests_total\{route="/v1/recommend",status="200"\} ([0-9.e+]+)$'
    return sum(float(m) for m in re.findall(pattern, text, flags=re.M))


def test_two_workers_share_metrics_and_reloads(run_dir, bundle, tmp_path):
    other = tmp_path / "other"
    export_bundle(run_dir, other, index=IndexParams(kind="hnsw"))  # another index: another index_version
    port = free_port()
    (tmp_path / "token").write_text("abc\n")
    command = [sys.executable, "-m", "mirec", "serve", str(bundle), "--port", str(port), "--workers", "2"]
    before = set(Path(tempfile.gettempdir()).glob("mirec-serve-*"))
    proc = subprocess.Popen([*command, "--token-file", str(tmp_path / "token")], stderr=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(port)
        time.sleep(1.0)  # the second worker may come up a little after the first
        seen = metadata_of_fresh_connections(port)
        assert len(seen) == 2, f"one worker answered every connection: {seen}"
        body = {"history": ["i100", "i101"], "n": 5}
        sent = 40
        for _ in range(sent):
            with httpx.Client(timeout=10) as client:
                assert client.post(f"http://127.0.0.1:{port}/v1/recommend", json=body, headers=AUTH).status_code == 200
        assert requests_counted(port) == sent  # the sum over both workers, read from either
        answer = httpx.post(
            f"http://127.0.0.1:{port}/admin/reload", json={"path": str(other)}, headers=AUTH, timeout=60
        )
        assert answer.status_code == 200, answer.text
        new_version = json.loads((other / "manifest.json").read_text())["index_version"]
        assert new_version not in seen.values()
        deadline = time.time() + 20
        while time.time() < deadline:
            after = metadata_of_fresh_connections(port, tries=20)
            if len(after) == 2 and set(after.values()) == {new_version}:
                break
            time.sleep(0.3)
        assert len(after) == 2 and set(after.values()) == {new_version}, after
        proc.send_signal(signal.SIGHUP)  # passed to every worker: each reloads its bundle and says so
        time.sleep(3)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    reloaded = [line for line in err.splitlines() if "reloaded" in line and str(other) in line]
    assert len(reloaded) == 2 and "Traceback" not in err, err
    assert set(Path(tempfile.gettempdir()).glob("mirec-serve-*")) == before  # the control folder is gone
