"""One broker outage shared by several scenarios: each meets the kill and the restart at a barrier.

Tests that each killed a private broker for a fixed 15-30 s and waited it out paid that wait one after the
other (~5 minutes in all). ``test_broker_outage`` runs them as concurrent scenarios on one private broker
instead: every scenario gets its engine (its own app, processes and temp dir) to the state it wants the
kill to find, and calls ``ready_to_kill``; the broker is SIGKILLed once every scenario is there. The broker
is started again once every scenario has called ``ready_to_restart`` (what it checks while the broker is
down is done) and ``down_s`` have passed since the kill: no scenario sees a shorter outage than it had on
its own. A scenario that fails leaves the barriers, so that the others go on and report their own result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from engine_support import PrivateBroker

KILL, RESTART = "kill", "restart"


class Outage:
    """The kill and restart of ``broker``, coordinated between the scenarios named ``names``."""

    def __init__(self, broker: PrivateBroker, names: list[str], down_s: float) -> None:
        self.broker = broker
        self.down_s = down_s
        self.killed_at = 0.0
        """Wall clock of the kill (``time.time()``), for the checks that compare timestamps with it."""
        self.restarted_at = 0.0
        self._killed_mono = 0.0
        self._live = set(names)
        self._arrived: dict[str, set[str]] = {KILL: set(), RESTART: set()}
        self._passed = {KILL: False, RESTART: False}
        self._changed = asyncio.Condition()

    @property
    def down(self) -> bool:
        return self._passed[KILL] and not self._passed[RESTART]

    @property
    def restarted(self) -> bool:
        return self._passed[RESTART]

    def seconds_down(self) -> float:
        return time.monotonic() - self._killed_mono

    async def others_ready_to_kill(self, name: str) -> None:
        """Wait until every other scenario waits for the kill (for a scenario whose state moves fast)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._live - {name} <= self._arrived[KILL])

    async def ready_to_kill(self, name: str) -> None:
        """This scenario is ready for the kill; returns once the broker has been killed."""
        await self._arrive(KILL, name)
        await self.passed(KILL)

    async def ready_to_restart(self, name: str) -> None:
        """This scenario has checked what it checks while the broker is down; returns at once."""
        await self._arrive(RESTART, name)

    async def passed(self, barrier: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._passed[barrier])

    async def leave(self, name: str) -> None:
        """This scenario is over (done or failed): the barriers no longer wait for it."""
        async with self._changed:
            self._live.discard(name)
            self._changed.notify_all()

    async def _arrive(self, barrier: str, name: str) -> None:
        async with self._changed:
            self._arrived[barrier].add(name)
            self._changed.notify_all()

    async def _all_at(self, barrier: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._live <= self._arrived[barrier])

    async def _pass(self, barrier: str) -> None:
        async with self._changed:
            self._passed[barrier] = True
            self._changed.notify_all()

    async def run(self) -> None:
        """Kill the broker when everyone is ready, start it again when everyone is and ``down_s`` passed."""
        await self._all_at(KILL)
        self.killed_at = time.time()
        self._killed_mono = time.monotonic()
        await asyncio.to_thread(self.broker.kill)
        await self._pass(KILL)
        await self._all_at(RESTART)
        await asyncio.sleep(max(0.0, self.down_s - self.seconds_down()))
        await asyncio.to_thread(self.broker.start)
        self.restarted_at = time.time()
        await self._pass(RESTART)


Scenario = Callable[[Outage, str], Awaitable[None]]


async def run_scenarios(outage: Outage, scenarios: dict[str, Scenario]) -> dict[str, BaseException | None]:
    """Run every scenario against one outage; what each raised (None: it passed)."""

    async def one(name: str, scenario: Scenario) -> BaseException | None:
        try:
            await scenario(outage, name)
        except Exception as exc:  # reported by the scenario's own test
            return exc
        finally:
            await outage.leave(name)
        return None

    coordinator = asyncio.ensure_future(outage.run())
    everyone = asyncio.ensure_future(
        asyncio.gather(*(one(name, scenario) for name, scenario in scenarios.items()))
    )
    try:
        await asyncio.wait({coordinator, everyone}, return_when=asyncio.FIRST_COMPLETED)
        if coordinator.done() and coordinator.exception() is not None:
            raise RuntimeError("the shared outage failed") from coordinator.exception()
        outcomes = await everyone  # the scenarios stop their own processes, failed or not
    finally:
        for task in (everyone, coordinator):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return dict(zip(scenarios, outcomes, strict=True))
