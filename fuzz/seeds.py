"""Writes the seed corpus of the fuzz targets from the OpenTelemetry Python SDK's
own encoder (run from the repository root: python3 fuzz/seeds.py). The seeds of
wal_segment are segment files written by tracespool itself."""
import gzip
import json
import os

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode
from google.protobuf.json_format import MessageToDict
import base64

ROOT = os.path.join(os.path.dirname(__file__), "corpus")


def spans(service, attrs, n):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, **attrs}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("seed", "1.0", attributes=attrs)
    first = None
    for i in range(n):
        links = [Link(first.get_span_context(), attributes=attrs)] if first is not None else []
        with tracer.start_as_current_span(f"health op {i}" if i % 2 else f"op {i}", links=links,
                                          attributes={**attrs, "i": i, "f": i / 3, "b": True,
                                                      "arr": ["x", "y"], "drop": str(i == 3).lower()}) as s:
            s.add_event("ev", attrs)
            if i == 1:
                s.set_status(Status(StatusCode.ERROR, "boom"))
            if first is None:
                first = s
    return memory.get_finished_spans()


def otlp_json(req):
    """The OTLP JSON mapping: like protobuf's, but ids in hex."""
    def fix(o):
        if isinstance(o, dict):
            return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else fix(v))
                    for k, v in o.items()}
        if isinstance(o, list):
            return [fix(x) for x in o]
        return o
    return json.dumps(fix(MessageToDict(req, use_integers_for_enums=True))).encode()


SEEDS = {
    "plain": ("keep", {}, 2),
    "pii": ("web", {"user.email": "jane@example.com", "card": "4111 1111 1111 1111", "ip": "10.0.0.1",
                    "ip6": "fe80::1", "auth": "Bearer abc.def", "secret.token": "s3cr3t",
                    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"}, 4),
    "long": ("web", {f"k{i}": "v" * 40 for i in range(12)}, 3),
}

for name, (service, attrs, n) in SEEDS.items():
    req = encode_spans(spans(service, attrs, n))
    pb = req.SerializeToString()
    js = otlp_json(req)
    for target, file, data in (("otlp_protobuf", name, pb), ("otlp_json", f"{name}.json", js),
                               ("gzip", name, gzip.compress(pb)), ("gzip", f"{name}.json", gzip.compress(js))):
        with open(os.path.join(ROOT, target, file), "wb") as f:
            f.write(data)
