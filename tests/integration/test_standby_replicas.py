"""Standby replicas on the real broker (ADR 0024): two processors with ``--standby-replicas 1`` keep warm
copies of each other's stores, equal to the active ones; when one is SIGKILLed the survivor takes its
partitions over restoring only the tail, and every run completes with no transition twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer
from rocksdict import AccessType, Options, Rdict

from orchestrator import App, topology
from orchestrator._engine.store import META_PREFIX
from tests.integration.engine_support import (
    APP_SPEC,
    EngineProcess,
    check_no_duplicate_transitions,
    child_env,
    end_offsets,
    free_ports,
    history,
    settings,
)

PARTITIONS = 4
RUNS = 40
RESTORED = re.compile(
    r"assigned partitions (\[.*\]): restored (\d+) changelog records into (\d+) stores in [\d.]+s "
    r"\((\d+) of them warm\)"
)


async def _wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.2)


def _assignments(log: Path) -> list[re.Match[str]]:
    return list(RESTORED.finditer(log.read_text(errors="replace"))) if log.exists() else []


def _owns_inbox(log: Path) -> bool:
    found = _assignments(log)
    return bool(found) and ".inbox'" in found[-1].group(1)


def _standby_lags(port: int) -> dict[tuple[str, int], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = re.findall(r"orchestrator_standby_lag_records\{(.*?)\} (\S+)", text)
    out = {}
    for labels, value in found:
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(got["stage"], int(got["partition"]))] = float(value)
    return out


def _content(path: Path) -> dict[bytes, bytes]:
    """Every key but local metadata (``m/``: the active store's inbox offset), read-only: the processor
    holds the directory's lock, and a read-only open does not take it (it replays the WAL)."""
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        items = ((k, v) for k, v in db.items() if isinstance(k, bytes) and isinstance(v, bytes))
        return {k: v for k, v in items if not k.startswith(META_PREFIX)}
    finally:
        db.close()


async def test_standbys_mirror_the_active_stores_and_a_takeover_restores_only_the_tail(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    state = tmp_path / "state"
    ports = free_ports(2)
    http_ports = free_ports(2)
    logs = {"sa": tmp_path / "sa.log", "sb": tmp_path / "sb.log"}
    procs = {}
    for name, port, http in zip(logs, ports, http_ports, strict=True):
        args = ["--instance-id", name, "--state-dir", str(state), "--standby-replicas", "1"]
        args += ["--metrics-port", str(port), "--http-port", str(http), "--advertised-host", "127.0.0.1"]
        procs[name] = EngineProcess("processor", APP_SPEC, env, *args, log=logs[name])
    work = EngineProcess("worker", APP_SPEC, env, log=tmp_path / "w.log")
    app = App(unique_name, settings=settings(kafka_bootstrap))
    for p in (*procs.values(), work):
        p.start()
    try:
        await _wait_for(lambda: all(_owns_inbox(log) for log in logs.values()), what="both own inbox")
        async with app.client() as client:
            first = [await client.start("five", i, run_id=f"s{i}") for i in range(RUNS)]
            assert await asyncio.gather(*(h.result(timeout=60) for h in first)) == [
                i + 11111 for i in range(RUNS)
            ]

            # Each processor keeps the other's stores warm: same keys and values (run states, timers,
            # indexes, summaries) as the active store, once the standby has fetched the last commit.
            owners = {name: {int(p) for p in re.findall(r"\.inbox', (\d+)\)", _assignments(log)[-1].group(1))}
                      for name, log in logs.items()}  # fmt: skip
            assert owners["sa"] | owners["sb"] == set(range(PARTITIONS))
            pairs = [
                (
                    state / unique_name / name / f"p{p}",
                    state / unique_name / ("sb" if name == "sa" else "sa") / f"p{p}",
                )
                for name, owned in owners.items()
                for p in owned
            ]

            def mirrored() -> bool:
                return all(_content(standby) == _content(active) for active, standby in pairs)

            await _wait_for(mirrored, 20, "standby stores equal to the active ones")
            for active, _ in pairs:
                assert sum(1 for k in _content(active) if k.startswith(b"r/")) > 5
            # Run queries are answered from active stores only: asked for every partition, each processor
            # answers for its own, never for those it keeps warm.
            for (name, owned), http in zip(owners.items(), http_ports, strict=True):
                url = f"http://127.0.0.1:{http}/runs?partitions=0,1,2,3&limit=1"
                with urllib.request.urlopen(url, timeout=10) as response:
                    assert set(json.loads(response.read())["partitions"]) == owned, name
            # ... and say so: lag 0 on each processor's 4 standbys (2 inbox, 2 keyed partitions).
            lags: list[dict[tuple[str, int], float]] = []

            def caught_up() -> bool:
                lags[:] = [_standby_lags(port) for port in ports]
                return all(len(lag) == PARTITIONS and not any(lag.values()) for lag in lags)

            try:
                await _wait_for(caught_up, 10, "standby lag 0 on every standby")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last seen: {lags}") from None

            # SIGKILL sa with runs in flight: sb takes its partitions over from its standbys.
            second = [await client.start("five", i, run_id=f"t{i}") for i in range(RUNS)]
            await _wait_for(
                lambda: len((tmp_path / "executions.log").read_text().splitlines()) >= 5 * RUNS + 20
            )
            before = len(_assignments(logs["sb"]))
            procs["sa"].kill()
            assert await asyncio.gather(*(h.result(timeout=90) for h in second)) == [
                i + 11111 for i in range(RUNS)
            ]
    finally:
        for p in (*procs.values(), work):
            p.terminate()
    takeover = _assignments(logs["sb"])[before:]
    assert takeover, "sb logged no assignment after sa died"
    last = takeover[-1]
    assert set(re.findall(r"\.inbox', (\d+)\)", last.group(1))) == {str(p) for p in range(PARTITIONS)}
    restored, stores, warm = int(last.group(2)), int(last.group(3)), int(last.group(4))
    # Every run store opened warm: sa's two were standbys on sb, sb's own two it held before (range is
    # eager: a rebalance revokes and assigns every partition). The keyed stores are empty (no keyed stage).
    assert stores == 2 * PARTITIONS and warm >= PARTITIONS, last.group(0)
    # Without standbys sb would restore every record of sa's run partitions' changelogs; with them, at most
    # what sa committed after sb's standbys last fetched.
    with contextlib.closing(Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "t"})) as consumer:
        ends = end_offsets(consumer, topology.changelog_topic(unique_name), PARTITIONS)
    cold = sum(ends[p] for p in owners["sa"])
    assert cold > 150 and restored < cold // 10, (restored, cold)
    hist = history(app)
    assert len(hist) == 2 * RUNS
    check_no_duplicate_transitions(hist)
