"""A reader's first contact with the cluster: an unreachable bootstrap fails in about a second, with why.

Why: a reader asks for watermarks and offsets with a 30 s timeout, and librdkafka blocks the whole time
when no broker answers: ``orchestrator runs show`` against a dead bootstrap waited 37 s, then failed with
"All broker connections are down" and no word of which address or why (the reason, "Connect to
ipv4#127.0.0.1:1 failed: Connection refused", only reached the log, hundreds of times). librdkafka knows
much sooner: once every bootstrap address has failed once it raises ``_ALL_BROKERS_DOWN`` through
``error_cb``, after ~0.2 s for a refused connection or an unknown host. `first_contact` listens for it on a
short-lived admin client, so the read fails then, naming the bootstrap and the first connection error. A
refused login or TLS handshake is told apart as in `access` (a `KafkaAccessError`). A cluster that answers
costs one metadata request (a few ms); one whose packets are dropped gives no error, so a deadline bounds
the wait.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from orchestrator._engine import access, kafka
from orchestrator._kafka_config import ClientConfig, scrub
from orchestrator.settings import Settings

FIRST_CONTACT_S = 10.0
"""How long a first contact may go without any answer or error before the cluster counts as unreachable."""

_FIRST_TRY_S = 0.25
"""The first metadata try's timeout; each next try's is doubled, up to what is left of the deadline."""

_QUIET = logging.getLogger("orchestrator.kafka.reach")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # the probe's lines would repeat what the error says


class KafkaUnreachableError(KafkaException):
    """No broker of the bootstrap list answered: refused, unknown host, or silent until the deadline.

    A ``KafkaException`` (code ``_ALL_BROKERS_DOWN`` or ``_TIMED_OUT``), so code that rides out outages by
    catching those keeps doing so; ``bootstrap`` and ``detail`` are for the message a person reads.
    """

    def __init__(self, bootstrap: str, detail: str, code: int = KafkaError._ALL_BROKERS_DOWN) -> None:
        super().__init__(KafkaError(code, f"Kafka at {bootstrap} cannot be reached: {detail}"))
        self.bootstrap = bootstrap
        self.detail = detail


def first_contact(
    settings: Settings, conf: ClientConfig, topic: str | None = None, timeout: float = FIRST_CONTACT_S
) -> None:
    """Return once the cluster answers a metadata request (for ``topic``, or the cluster's).

    Raises `KafkaUnreachableError` when librdkafka reports every bootstrap broker down, or nothing answers
    within ``timeout``; `access.KafkaAccessError` when the cluster refuses this client's login or TLS.
    """
    errors: list[KafkaError] = []
    # A producer-type handle may ask the broker to auto-create a topic it requests metadata for (librdkafka's
    # producer default); a probe must never create an app's topic with the broker's default partitions.
    quiet = {"logger": _QUIET, "error_cb": errors.append, "allow.auto.create.topics": False}
    probe = kafka.new_admin(ClientConfig({**conf, **quiet}))
    bootstrap = settings.bootstrap_servers
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        # Each try waits twice as long as the last: short tries hear of a down broker at once, and a try
        # must outlast the round trip, or a reachable cluster far away (RTT >= 0.25 s) never answers in time.
        wait = max(min(deadline - time.monotonic(), _FIRST_TRY_S * 2**tries), 0.01)
        tries += 1
        try:
            probe.list_topics(topic, timeout=wait)
            return
        except KafkaException:
            pass
        probe.poll(0)  # serves error_cb
        for err in errors:
            refused = access._refusal(settings, err, conf)
            if refused is not None:
                raise refused
        if any(err.code() == KafkaError._ALL_BROKERS_DOWN for err in errors):
            raise KafkaUnreachableError(bootstrap, _detail(errors, conf))
        if time.monotonic() >= deadline:
            why = f"no answer within {timeout:.0f} s" + (f" ({_detail(errors, conf)})" if errors else "")
            raise KafkaUnreachableError(bootstrap, why, KafkaError._TIMED_OUT)


def _detail(errors: list[KafkaError], conf: ClientConfig) -> str:
    """The first connection error (it names the address and the reason), else librdkafka's summary."""
    specific = [err for err in errors if err.code() != KafkaError._ALL_BROKERS_DOWN]
    text: Any = (specific or errors)[0].str()
    return scrub(str(text), conf)
