"""Experiments only: the bench app's processor with librdkafka producer/consumer overrides.

The CLI (``orchestrator processor``) has no flag for ``ProcessorConfig.producer_overrides``; this runs the
same ``Processor`` with them, so a setting can be tried without changing the engine:
``python -m bench run --peers --workflows five --processor-set retry.backoff.ms=5``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench.apps import app
from orchestrator._engine.processor import Processor, ProcessorConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instance-id", required=True)
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--max-batch", type=int, default=500)
    ap.add_argument("--batch-linger-ms", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="producer setting")
    ap.add_argument("--consumer-set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    producer = dict(kv.split("=", 1) for kv in args.set)
    consumer = dict(kv.split("=", 1) for kv in args.consumer_set)
    config = ProcessorConfig(
        instance_id=args.instance_id,
        state_dir=args.state_dir,
        max_batch=args.max_batch,
        batch_linger_ms=args.batch_linger_ms,
        producer_overrides=producer,
        consumer_overrides=consumer,
    )
    logging.getLogger("bench").info("processor overrides: producer %s consumer %s", producer, consumer)
    Processor(app, config).run()


if __name__ == "__main__":
    main()
