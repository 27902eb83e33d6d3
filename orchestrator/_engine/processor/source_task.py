"""Users' topics (a StreamTask over the source topics, stateless): what the app's triggers and event
sources make of a record, produced as requests to the keyed stage and the inbox.

Every user function runs inside ``sources.translate``'s guard; a record one of them cannot use is
dead-lettered (its offset committed all the same), so a poison record never stops the loop (ADR 0011).
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from orchestrator._engine.processor.output import Output
from orchestrator._engine.sources import SourceError, Translation, translate_each
from orchestrator.app import App

log = logging.getLogger("orchestrator.processor")


class SourceTask:
    def __init__(self, app: App, output: Output) -> None:
        self.app = app
        self.output = output

    def handle(self, msg: Message, now_ms: int) -> None:
        # Requests travel on through the keyed stage, the inbox and the history: none may refuse them.
        try:
            result = translate_each(self.app, msg, now_ms, self.output.record_limit)
        except Exception as exc:  # translate guards all user code: this is an engine bug; keep the record
            log.exception("internal error translating %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
            result = Translation(errors=[SourceError(f"internal error: {type(exc).__name__}: {exc}")])
            error_type = f"InternalError.{type(exc).__name__}"
        else:
            error_type = "SourceError"
        for r in result.routed:
            if r.routing is None:
                self.output.to_inbox(r.event)
            else:
                self.output.to_keyed(r.routing, r.event)
        if result.errors:
            self.output.dead_letter(msg, error_type, result.reason, now_ms)
