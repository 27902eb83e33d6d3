"""The one error the local-broker manager raises.

Everything that can go wrong while preparing or running the development broker (no Java, Maven Central
unreachable, a port held by another program, a broker that died while starting) is reported as a
:class:`DevKafkaError` whose message says what to do next, so the CLI can print it without a traceback.
"""

from __future__ import annotations


class DevKafkaError(RuntimeError):
    """The development broker could not be prepared, started, stopped or queried."""
