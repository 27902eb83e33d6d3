"""The processor: consume the inbox, fold each event into its run, emit what follows, exactly once.

One module per job, after Kafka Streams (docs/adr/0013-processor-structure.md): `loop` (StreamThread: poll,
batch, transaction, rebalance), `transactions` (the producer's transactions and faults), `run_task`,
`keyed_task`, `source_task` (StreamTasks: one kind of input each), `parking`, `run_states`,
`state_manager` (ProcessorStateManager: stores, restore, changelog), `output` (RecordCollector).
"""

from orchestrator._engine.processor.config import ProcessorConfig, ProcessorStats
from orchestrator._engine.processor.loop import Processor

__all__ = ["Processor", "ProcessorConfig", "ProcessorStats"]
