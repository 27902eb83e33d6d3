"""Processes, ports, environments: everything the harness starts, it starts here and stops by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ORCHESTRATOR_BENCH_CACHE", Path.home() / ".cache" / "orchestrator-bench"))
ENVS = CACHE / "envs"


class BenchError(RuntimeError):
    """A system could not be brought up or measured; the message says why."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0, proc: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


class Child:
    """One child process in its own session, output to a log file; ``stop()`` ends it by its PID."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        **popen_kw: Any,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        fh = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen_kw,
        )
        fh.close()
        self.pid = self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        # children it forked (celery prefork, hypercorn) share its process group, whose id is its PID
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def run(args: list[str], timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def venv(name: str, packages: list[str], probe: str) -> Path:
    """``ENVS/name``, created and filled with ``packages`` unless ``probe`` already imports there."""
    env = ENVS / name
    py = env / "bin" / "python"
    if py.exists() and run([str(py), "-c", probe]).returncode == 0:
        return env
    log(f"installing {' '.join(packages)} into {env}")
    ENVS.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        r = run([sys.executable, "-m", "venv", "--without-pip", str(env)])
        if r.returncode != 0:
            raise BenchError(f"venv {env}: {r.stderr.strip()[-500:]}")
        r = run([str(py), "-m", "ensurepip", "--upgrade"])
        if r.returncode != 0:
            raise BenchError(f"ensurepip in {env}: {r.stderr.strip()[-500:]}")
    r = run([str(py), "-m", "pip", "install", "-q", *packages])
    if r.returncode != 0 or run([str(py), "-c", probe]).returncode != 0:
        raise BenchError(f"pip install {' '.join(packages)} failed: {(r.stderr or r.stdout).strip()[-800:]}")
    return env


def apt_binary(binary: str, package: str) -> str:
    """Path of ``binary``, installing the Debian ``package`` (we run as root here) if it is missing."""
    for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin", *_pg_bins()):
        if (Path(d) / binary).exists():
            return str(Path(d) / binary)
    log(f"apt-get install {package}")
    r = run(["apt-get", "install", "-y", "-q", package])
    if r.returncode != 0:
        run(["apt-get", "update", "-q"])
        r = run(["apt-get", "install", "-y", "-q", package])
    if r.returncode != 0:
        raise BenchError(f"apt-get install {package}: {r.stderr.strip()[-500:]}")
    for d in ("/usr/bin", "/usr/sbin", *_pg_bins()):
        if (Path(d) / binary).exists():
            return str(Path(d) / binary)
    raise BenchError(f"{package} installed but no {binary} found")


def _pg_bins() -> list[str]:
    return [str(p / "bin") for p in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True)]


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def driver(
    python: Path | str,
    module_or_script: list[str],
    log_dir: Path,
    name: str,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> list[dict[str, Any]]:
    """Run a load driver to completion and return its ``BENCH-RESULT`` lines."""
    out = log_dir / f"{name}.log"
    try:
        r = subprocess.run(
            [str(python), *module_or_script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"driver {name} timed out after {timeout:.0f} s") from exc
    out.write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    results = [
        json.loads(line.split(" ", 1)[1])
        for line in r.stdout.splitlines()
        if line.startswith("BENCH-RESULT ")
    ]
    if not results:
        raise BenchError(f"driver {name} exited {r.returncode} with no result: {r.stderr.strip()[-600:]}")
    return results


def rss_mb(pid: int) -> float:
    import psutil

    try:
        p = psutil.Process(pid)
        return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20
    except psutil.Error:
        return 0.0


class ForeignCpu:
    """CPU used by processes the harness did not start, while a measurement runs (a noisy neighbour check).

    ``own`` adds processes we started that are not our descendants (the broker daemonizes)."""

    def __init__(self, own: list[int] | None = None) -> None:
        self.own = set(own or [])
        self.t0 = time.monotonic()
        self.before = self._foreign()

    def _foreign(self) -> dict[int, float]:
        import psutil

        mine = {os.getpid(), *self.own}
        for pid in list(mine):
            with contextlib.suppress(psutil.Error):
                mine.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        out = {}
        for p in psutil.process_iter(["pid"]):
            if p.pid in mine:
                continue
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        return out

    def cores(self) -> float:
        """Average cores used by foreign processes since construction."""
        after = self._foreign()
        used = sum(v - self.before.get(pid, 0.0) for pid, v in after.items())
        return round(used / max(1e-6, time.monotonic() - self.t0), 2)
