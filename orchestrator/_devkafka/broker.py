"""Start, stop and query one local single-node Kafka broker per data dir.

The broker runs detached (its own session, output to ``broker.log``) so it outlives the command that
started it: ``orchestrator kafka start`` returns while the broker keeps serving tests and demos. A second
``start`` on the same data dir finds the running broker through its pid file and reuses it rather than
fail on the busy port or, worse, start a second broker on the same storage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from orchestrator._devkafka import probe, state
from orchestrator._devkafka.config import (
    BrokerConfig,
    DataDir,
    jvm_options,
    new_cluster_id,
    read_properties,
    write_config_files,
)
from orchestrator._devkafka.errors import DevKafkaError
from orchestrator._devkafka.jars import KAFKA_VERSION, check_java, ensure_jars

DATA_DIR_ENV = "ORCHESTRATOR_KAFKA_DIR"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 30

# Brokers started by this process. Keeping the Popen objects lets ``stop`` reap them (no zombies, which
# would still look alive to a pid check) and stops Python warning that a running child was forgotten.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerInfo:
    """A running broker as seen by ``start`` or ``status``."""

    bootstrap: str
    pid: int
    log_path: Path
    data_dir: Path
    started_new: bool
    """False when ``start`` found this data dir's broker already running and reused it."""
    seconds: float
    """Wall-clock seconds the call took (for ``start``: until the broker answered)."""
    ready: bool = True
    """Whether the broker answered a metadata request (``status`` may see one still booting)."""
    kafka_version: str = KAFKA_VERSION


def default_data_dir() -> Path:
    """``$ORCHESTRATOR_KAFKA_DIR`` or ``var/kafka`` under the current directory."""
    return Path(os.environ.get(DATA_DIR_ENV, "var/kafka"))


def _layout(data_dir: Path | None) -> DataDir:
    # Absolute, because the path is part of the broker's command line that identifies it later.
    return DataDir((data_dir or default_data_dir()).expanduser().resolve())


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no broker log)"


def start(
    data_dir: Path | None = None,
    port: int = 19092,
    controller_port: int = 19093,
    *,
    timeout: float = START_TIMEOUT_S,
    heap_mb: int = 512,
) -> BrokerInfo:
    """Return a ready broker for ``data_dir``: the one already running there, or a newly started one."""
    began = time.monotonic()
    layout = _layout(data_dir)
    reused = _reuse_running(layout, began, timeout)
    if reused is not None:
        return reused
    lib = ensure_jars()
    java = check_java()
    config = BrokerConfig(port=port, controller_port=controller_port, heap_mb=heap_mb)
    _check_ports_free(config)
    _check_controller_port_unchanged(layout, config)
    write_config_files(layout, config)
    cluster_id = _format_once(java, lib, layout, config)
    process = _launch(java, lib, layout, config)
    recorded = state.RecordedState(
        pid=process.pid, bootstrap=config.bootstrap, port=port, controller_port=controller_port,
        cluster_id=cluster_id, kafka_version=KAFKA_VERSION, started_at=time.time(), startup_seconds=0.0,
    )  # fmt: skip
    state.write_pid(layout, process.pid)
    state.write_state(layout, recorded)
    _wait_ready(process, layout, config, began + timeout)
    seconds = time.monotonic() - began
    state.write_state(layout, _with_startup(recorded, seconds))
    return BrokerInfo(config.bootstrap, process.pid, layout.log_path, layout.root, True, seconds)


def _with_startup(recorded: state.RecordedState, seconds: float) -> state.RecordedState:
    return state.RecordedState(**{**recorded.__dict__, "startup_seconds": round(seconds, 3)})


def _reuse_running(layout: DataDir, began: float, timeout: float) -> BrokerInfo | None:
    pid = state.running_pid(layout)
    if pid is None:
        return None
    bootstrap = _recorded_bootstrap(layout)
    admin = probe.admin_client(bootstrap)
    while not (probe.tcp_open(int(bootstrap.rpartition(":")[2])) and probe.answers(admin, 2.0)):
        if time.monotonic() > began + timeout or not state.is_our_broker(pid, layout):
            raise DevKafkaError(
                f"The broker of {layout.root} (pid {pid}) is running but does not answer on {bootstrap}. "
                f"Stop it with 'orchestrator kafka stop --dir {layout.root}'. Log tail:\n"
                + log_tail(layout.log_path)
            )
        time.sleep(0.2)
    return BrokerInfo(bootstrap, pid, layout.log_path, layout.root, False, time.monotonic() - began)


def _recorded_bootstrap(layout: DataDir) -> str:
    recorded = state.read_state(layout)
    if recorded is not None:
        return recorded.bootstrap
    listeners = read_properties(layout.server_properties).get("listeners", "")
    for listener in listeners.split(","):
        if listener.startswith("PLAINTEXT://"):
            return listener.removeprefix("PLAINTEXT://")
    raise DevKafkaError(f"Cannot tell where the broker of {layout.root} listens (no state file)")


def _check_ports_free(config: BrokerConfig) -> None:
    if config.port == config.controller_port:
        raise DevKafkaError(f"The broker and controller ports must differ (both {config.port}).")
    for name, port in (("broker", config.port), ("controller", config.controller_port)):
        if not probe.port_is_free(port):
            raise DevKafkaError(
                f"The {name} port 127.0.0.1:{port} is already in use by {probe.port_owner(port)}. "
                f"Stop it or choose another with --{'port' if name == 'broker' else 'controller-port'}."
            )


def _check_controller_port_unchanged(layout: DataDir, config: BrokerConfig) -> None:
    """A formatted dir records its controller endpoint in the metadata log; it cannot move afterwards."""
    if not (layout.meta_properties.is_file() and layout.server_properties.is_file()):
        return
    previous = read_properties(layout.server_properties).get("controller.quorum.bootstrap.servers")
    if previous and previous != config.controller_endpoint:
        raise DevKafkaError(
            f"{layout.root} was formatted for controller {previous}; start it with that controller port "
            "or use a new --dir."
        )


def _java_command(java: str, lib: Path, layout: DataDir, config: BrokerConfig) -> list[str]:
    # The JVM expands the "lib/*" wildcard itself; no shell is involved.
    return [java, *jvm_options(layout, config), "-cp", f"{lib}/*"]


def _format_once(java: str, lib: Path, layout: DataDir, config: BrokerConfig) -> str:
    """Format the storage on first use and return the cluster id; formatting twice would fail."""
    if layout.meta_properties.is_file():
        return read_properties(layout.meta_properties).get("cluster.id", "?")
    cluster_id = new_cluster_id()
    command = [
        *_java_command(java, lib, layout, config), "kafka.tools.StorageTool", "format", "--standalone",
        "-t", cluster_id, "-c", str(layout.server_properties),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise DevKafkaError(f"Formatting {layout.kraft_dir} failed (exit {result.returncode}):\n{output}")
    return cluster_id


def _launch(java: str, lib: Path, layout: DataDir, config: BrokerConfig) -> subprocess.Popen[bytes]:
    command = [*_java_command(java, lib, layout, config), "kafka.Kafka", str(layout.server_properties)]
    with layout.log_path.open("ab") as log:
        log.write(f"\n==== orchestrator: starting Kafka {KAFKA_VERSION} at {time.ctime()} ====\n".encode())
        log.flush()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=layout.root, start_new_session=True, close_fds=True,
        )  # fmt: skip
    _CHILDREN[process.pid] = process
    return process


def _wait_ready(
    process: subprocess.Popen[bytes], layout: DataDir, config: BrokerConfig, deadline: float
) -> None:
    admin = None
    while True:
        code = process.poll()
        if code is not None:
            state.clear_run_files(layout)
            raise DevKafkaError(
                f"The broker exited with code {code} while starting. Log tail ({layout.log_path}):\n"
                + log_tail(layout.log_path)
            )
        if probe.tcp_open(config.port):
            admin = admin or probe.admin_client(config.bootstrap)
            if probe.answers(admin, 2.0):
                return
        if time.monotonic() > deadline:
            _terminate(process.pid)
            state.clear_run_files(layout)
            raise DevKafkaError(
                f"The broker did not answer on {config.bootstrap} in time and was stopped. "
                f"Log tail ({layout.log_path}):\n" + log_tail(layout.log_path)
            )
        time.sleep(0.1)


def _wait_gone(pid: int, timeout: float) -> bool:
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


def _terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM for a controlled shutdown; SIGKILL if it hangs (it can wait minutes for a lost quorum)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, 10.0)


def stop(data_dir: Path | None = None, *, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the data dir's broker; False if none was running. The formatted storage is kept."""
    layout = _layout(data_dir)
    pid = state.running_pid(layout)
    if pid is None:
        return False
    _terminate(pid, timeout)
    state.clear_run_files(layout)
    return True


def status(data_dir: Path | None = None) -> BrokerInfo | None:
    """The data dir's running broker (``ready`` says if it answers), or None if none runs."""
    began = time.monotonic()
    layout = _layout(data_dir)
    pid = state.running_pid(layout)
    if pid is None:
        return None
    bootstrap = _recorded_bootstrap(layout)
    ready = probe.broker_answers(bootstrap)
    return BrokerInfo(
        bootstrap, pid, layout.log_path, layout.root, False, time.monotonic() - began, ready=ready
    )
