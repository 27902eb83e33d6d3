"""What a data dir remembers about the broker running from it: a pid file and a small JSON state file.

The pid alone is not proof: pids are reused after a reboot or a crash. A pid counts as "our broker" only
if that process is alive (not a zombie) and its command line runs ``kafka.Kafka`` with this data dir's
``server.properties``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass

import psutil

from orchestrator._devkafka.config import DataDir


@dataclass(frozen=True)
class RecordedState:
    """Written once the broker answers; read by ``status`` and by a later ``start`` that reuses it."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    cluster_id: str
    kafka_version: str
    started_at: float
    startup_seconds: float


def write_pid(data_dir: DataDir, pid: int) -> None:
    data_dir.pid_path.write_text(f"{pid}\n", encoding="utf-8")


def read_pid(data_dir: DataDir) -> int | None:
    try:
        return int(data_dir.pid_path.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return None


def write_state(data_dir: DataDir, state: RecordedState) -> None:
    tmp = data_dir.state_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    tmp.replace(data_dir.state_path)  # atomic, so a reader never sees half a file


def read_state(data_dir: DataDir) -> RecordedState | None:
    try:
        raw = json.loads(data_dir.state_path.read_text(encoding="utf-8"))
        return RecordedState(**raw)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def clear_run_files(data_dir: DataDir) -> None:
    """Forget the running broker (after it stopped); the formatted storage stays."""
    for path in (data_dir.pid_path, data_dir.state_path):
        path.unlink(missing_ok=True)


def is_our_broker(pid: int, data_dir: DataDir) -> bool:
    """True if ``pid`` is a live broker process started for this data dir."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "kafka.Kafka" in cmdline and str(data_dir.server_properties) in cmdline


def running_pid(data_dir: DataDir) -> int | None:
    """The pid of this data dir's broker if it is running, else ``None`` (stale files are removed)."""
    pid = read_pid(data_dir)
    if pid is None:
        return None
    if is_our_broker(pid, data_dir):
        return pid
    with contextlib.suppress(OSError):
        clear_run_files(data_dir)
    return None
