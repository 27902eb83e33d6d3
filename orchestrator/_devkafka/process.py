"""The broker JVMs themselves: format a node's storage, launch it detached, stop or kill it, read its log.

Kept apart from ``broker`` (which decides what runs where) so that module reads as the life cycle of a data
dir, and this one as the few things we do to a Java process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from orchestrator._devkafka import security
from orchestrator._devkafka.config import BrokerConfig, DataDir, jvm_options
from orchestrator._devkafka.errors import DevKafkaError
from orchestrator._devkafka.jars import KAFKA_VERSION
from orchestrator._devkafka.security import Credentials

STOP_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 30

# Brokers started by this process. Keeping the Popen objects lets ``stop`` reap them (no zombies, which
# would still look alive to a pid check) and stops Python warning that a running child was forgotten.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no broker log)"


def java_command(java: str, lib: Path, layout: DataDir, config: BrokerConfig) -> list[str]:
    # The JVM expands the "lib/*" wildcard itself; no shell is involved.
    return [java, *jvm_options(layout, config), "-cp", f"{lib}/*"]


def format_once(
    java: str,
    lib: Path,
    layout: DataDir,
    config: BrokerConfig,
    cluster_id: str,
    credentials: Credentials | None,
) -> None:
    """Format a node's storage on first use; formatting twice would fail.

    Nodes of a cluster share the cluster id and are formatted alike against the static voter set; a lone
    node is formatted ``--standalone`` (a one-voter dynamic quorum). A secured node's SCRAM users are
    created here; their passwords are on this short-lived command line, never in its quoted output.
    """
    if layout.meta_properties.is_file():
        return
    command = [*java_command(java, lib, layout, config), "kafka.tools.StorageTool", "format"]
    command += [] if config.voters else ["--standalone"]
    command += ["-t", cluster_id, "-c", str(layout.server_properties)]
    command += security.scram_format_arguments(credentials) if credentials is not None else []
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise DevKafkaError(
            f"Formatting {layout.kraft_dir} failed (exit {result.returncode}):\n"
            + security.redact(output, credentials)
        )


def launch(java: str, lib: Path, layout: DataDir, config: BrokerConfig) -> subprocess.Popen[bytes]:
    command = [*java_command(java, lib, layout, config), "kafka.Kafka", str(layout.server_properties)]
    with layout.log_path.open("ab") as log:
        log.write(f"\n==== orchestrator: starting Kafka {KAFKA_VERSION} at {time.ctime()} ====\n".encode())
        log.flush()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=layout.root, start_new_session=True, close_fds=True,
        )  # fmt: skip
    _CHILDREN[process.pid] = process
    return process


def wait_gone(pid: int, timeout: float) -> bool:
    child = _CHILDREN.get(pid)
    try:
        if child is not None:
            child.wait(timeout)
            _CHILDREN.pop(pid, None)
        else:
            psutil.Process(pid).wait(timeout)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        return False
    except psutil.NoSuchProcess:
        pass
    return True


def terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM for a controlled shutdown; SIGKILL if it hangs (it can wait minutes for a lost quorum)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 10.0)
