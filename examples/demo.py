"""The main job: a processor and a worker on the local broker, running orders end to end, with progress.

Run by ``./dev demo``. Starts the processor and the worker as child processes (as you would deploy them),
starts a batch of orders through the client, shows them complete, and leaves commands to inspect them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from examples.orders import Order, app, fulfil_order
from orchestrator import RunFailedError
from orchestrator._logging import configure_logging

console = Console()
APP = "examples.orders:app"


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args, APP], start_new_session=True)


async def main(count: int) -> None:
    batch = uuid.uuid4().hex[:6]
    async with app.client() as client:
        handles = []
        for i in range(count):
            order = Order(
                id=f"{batch}-{i}",
                customer=f"c{i % 7}",
                items=["book", "pen"][: 1 + i % 2],
                amount_cents=1000 + 250 * i,
            )
            handles.append(await client.start(fulfil_order, order, run_id=f"order-{batch}-{i}"))
        console.print(f"started {count} runs of fulfil_order (run ids order-{batch}-0 .. {count - 1})")
        results = {}
        with Progress(
            TextColumn("[bold]orders"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("orders", total=count)

            async def wait(h: object) -> None:
                try:
                    results[h.run_id] = await h.result(timeout=120)  # type: ignore[attr-defined]
                except RunFailedError as exc:
                    results[h.run_id] = exc  # type: ignore[attr-defined]
                progress.advance(task)

            await asyncio.gather(*(wait(h) for h in handles))
        table = Table("run id", "charge", "reservation", "tracking")
        for run_id, r in list(results.items())[:10]:
            if isinstance(r, Exception):
                table.add_row(run_id, f"[red]{r}[/red]", "", "")
            else:
                table.add_row(run_id, r.charge_id, r.reservation_id, r.tracking)
        console.print(table)
        ours = {h.run_id for h in handles}
        runs = [r for r in await client.list_runs(workflow="fulfil_order") if r.run_id in ours]
        retried = [r.run_id for r in runs if any(s.attempts > 1 for s in r.steps)]
        console.print(f"[green]{count} orders done[/green]; {len(retried)} needed a retry of a flaky step.")
        console.print("\nInspect a run (state, steps, attempts, errors):")
        console.print(f"  .venv/bin/orchestrator runs show {(retried or [handles[0].run_id])[0]} --app {APP}")
        console.print(f"  .venv/bin/orchestrator runs list --from-changelog --app {APP}")


if __name__ == "__main__":
    count = int(os.environ.get("DEMO_ORDERS", "20"))
    # The demo's own client logs as the processes it starts do (ORCHESTRATOR_LOG_LEVEL/FORMAT): librdkafka's
    # warnings, e.g. the coordinator still loading on a fresh broker, as formatted records, not bare lines.
    configure_logging(app.settings.log_level, app.settings.log_format)
    procs = [spawn("processor", "--instance-id", "demo-processor"), spawn("worker")]
    try:
        time.sleep(1)
        asyncio.run(main(count))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
