"""A two-step workflow for the secured-cluster test, configured from the environment alone.

``SECURE_APP_NAME`` names the app (its topics); where Kafka is and how to log in to it come from the
``ORCHESTRATOR_KAFKA*`` settings, as they would for a deployed app and for the CLI run against it.
"""

from __future__ import annotations

import os

from orchestrator import App, WorkflowContext


def make_app(name: str) -> App:
    app = App(name)

    @app.step
    async def double(x: int) -> int:
        return 2 * x

    @app.step
    def add_one(x: int) -> int:
        return x + 1

    @app.workflow()
    async def compute(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(add_one, await ctx.step(double, x))

    return app


app = make_app(os.environ.get("SECURE_APP_NAME", "secure"))
