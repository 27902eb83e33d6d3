"""The OpenTelemetry SDK for the engine's processes (processor, worker, CLI), from the ``OTEL_*`` variables.

The engine itself uses opentelemetry-api only (``tracing``); the SDK and the OTLP exporter are the optional
``[otel]`` extra, imported here and nowhere else. A process sets tracing up only when asked to, by
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or both, comma separated; ``none`` is off) or an OTLP
endpoint variable (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and never when
``OTEL_SDK_DISABLED=true``. Everything else is the SDK's own reading of the standard variables: the
service name and resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the sampler
(``OTEL_TRACES_SAMPLER``), the batch processor (``OTEL_BSP_*``) and the exporter's endpoint, headers,
timeout and compression (``OTEL_EXPORTER_OTLP_*``).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("orchestrator.tracing")


def wanted(env: dict[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(env)
    if exporters is not None:
        return bool(exporters)
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter_names(env: dict[str, str]) -> list[str] | None:
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        return None
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return [n for n in names if n != "none"]


def configure_from_env(default_service: str) -> bool:
    """Install a TracerProvider exporting as the ``OTEL_*`` variables say; False if they do not ask for one
    (or the ``[otel]`` extra is missing, which is logged). Called once at the start of an engine process."""
    if not wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        from orchestrator._engine.tracing_ids import RunIds
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but the SDK is missing (kafka-orchestrator[otel])")
        return False
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service}
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=RunIds())
    names = _exporter_names(dict(os.environ)) or ["otlp"]
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http ([otel])")
                continue
            exporter = OTLPSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER %r is not supported here (otlp, console, none)", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans with %s", ", ".join(names))
    return True
