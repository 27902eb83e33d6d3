"""The app of the least-privilege ACL test: two task queues, an event source on a user topic, keyed waits.

Everything the engine does on behalf of such an app touches a topic, group or transactional id, so running
it with exactly the planned ACLs checks the plan: steps on two queues (two tasks topics), a wait for a
domain event from a topic of the user's (the processors' source topic, the keyed stage), and idempotent
starts (the keyed topic from the client). ``ACL_APP_NAME`` and ``ACL_APP_SOURCE`` name the app and its
source topic when the CLI loads it; the Kafka settings come from ``ORCHESTRATOR_KAFKA*`` as for any app.
"""

from __future__ import annotations

import os

from orchestrator import App, Settings, WorkflowContext


def make_app(name: str, source_topic: str, settings: Settings | None = None) -> App:
    app = App(name, settings=settings)
    app.event_source("approval", topic=source_topic, key="order_id", retention="10m")

    @app.step
    async def double(x: int) -> int:
        return 2 * x

    @app.step(queue="slow")
    def add_one(x: int) -> int:
        return x + 1

    @app.workflow()
    async def compute(ctx: WorkflowContext, x: int) -> int:
        doubled = await ctx.step(double, x)
        got = await ctx.wait_for_event("approval", key=f"order-{x}", timeout=120, lookback="10m")
        bonus = 0 if got.timed_out else int(got.payload["bonus"])
        return await ctx.step(add_one, doubled) + bonus

    return app


app = make_app(os.environ.get("ACL_APP_NAME", "acls"), os.environ.get("ACL_APP_SOURCE", "acls-approvals"))
