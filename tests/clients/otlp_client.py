#!/usr/bin/env python3
"""Sends spans to an OTLP endpoint with the OpenTelemetry Python SDK's official
exporters and reports, as JSON lines, every batch the exporter acknowledged.

Each batch is exported with `OTLPSpanExporter.export()`; the exporter retries
transient failures itself (and honours RetryInfo / Retry-After). When it gives up,
this script tries the same batch again (same spans, same idempotency key if keys are
on) until it succeeds or the deadline passes. Output, one line per acknowledged
batch: {"batch": n, "key": k, "spans": [{"trace_id", "span_id", "name", "attributes"}]}.
A final line {"done": true, "failures": n, "codes": {...}} summarises the failures
the exporter logged (e.g. RESOURCE_EXHAUSTED, 429).
"""
import argparse
import json
import logging
import os
import sys
import time

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from grpc import Compression as GrpcCompression
except ImportError as e:  # pragma: no cover
    print(f"the OpenTelemetry Python SDK is missing ({e}); run: pip install -r tests/requirements.txt", file=sys.stderr)
    sys.exit(3)


class Codes(logging.Handler):
    """Counts the failures the exporters log (their only report of status codes)."""

    def __init__(self):
        super().__init__()
        self.codes = {}

    def emit(self, record):
        msg = record.getMessage()
        for code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT", "ABORTED",
                     "Too Many Requests", "Service Unavailable", "429", "503"):
            if code in msg:
                self.codes[code] = self.codes.get(code, 0) + 1
                break


def batch_maker(args):
    """Returns make(n): the spans of batch n, made on demand."""
    # Extra attributes per scope: {"resource": {...}, "scope": {...}, "span": {...},
    # "event": {...}, "link": {...}}.
    extra = {}
    if args.attributes_json:
        with open(args.attributes_json) as f:
            extra = json.load(f)
    resource = Resource.create({"service.name": args.service, "test.run": args.prefix, "host.kind": "edge",
                                **extra.get("resource", {})})
    memory = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=args.max_attributes) if args.max_attributes else None
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tracespool.tests", "1.0", attributes=extra.get("scope") or None)

    def make(b):
        memory.clear()
        parent = None
        root = None
        for s in range(args.spans):
            links = ([Link(parent.get_span_context(), attributes=extra.get("link") or None)]
                     if parent is not None and s % 3 == 0 else [])
            # With --spans-per-trace K, spans come in traces of K: a root, then its
            # children (as an instrumented service makes them); else each is a root.
            child_of = None if args.spans_per_trace <= 1 or s % args.spans_per_trace == 0 else root
            with tracer.start_as_current_span(
                f"{args.prefix} op {b}.{s}",
                context=set_span_in_context(child_of) if child_of is not None else None,
                kind=SpanKind.SERVER if s % 2 == 0 else SpanKind.CLIENT,
                links=links,
                attributes={
                    "batch": b,
                    "index": s,
                    "ok": s % 2 == 0,
                    "ratio": s / 10.0,
                    "tags": ["a", "b", str(s)],
                    "prefix": args.prefix,
                    **extra.get("span", {}),
                },
            ) as span:
                span.add_event("step", {"n": s, **extra.get("event", {})})
                if s % 5 == 4:
                    span.set_status(Status(StatusCode.ERROR, "boom ✗ échec 失败"))
                if parent is None:
                    parent = span
                if child_of is None:
                    root = span
        return list(memory.get_finished_spans())

    return make


def exporter(args, key):
    headers = dict(h.split("=", 1) for h in args.header)
    if key:
        headers["idempotency-key"] = key
    headers = headers or None
    tls = args.endpoint.startswith("https://")
    if args.protocol == "grpc":
        # The gRPC exporter takes its CA bundle and client certificate from the
        # standard variables (OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, ...).
        for var, value in (("CERTIFICATE", args.ca_file), ("CLIENT_CERTIFICATE", args.client_cert),
                           ("CLIENT_KEY", args.client_key)):
            if value:
                os.environ[f"OTEL_EXPORTER_OTLP_TRACES_{var}"] = value
        return GrpcExporter(endpoint=args.endpoint, insecure=not tls, headers=headers, timeout=args.attempt_timeout,
                            compression=GrpcCompression.Gzip if args.gzip else None)
    extra = {}
    if args.ca_file:
        extra["certificate_file"] = args.ca_file
    if args.client_cert:
        extra["client_certificate_file"] = args.client_cert
        extra["client_key_file"] = args.client_key
    return HttpExporter(endpoint=args.endpoint, headers=headers, timeout=args.attempt_timeout,
                        compression=HttpCompression.Gzip if args.gzip else HttpCompression.NoCompression, **extra)


def describe(span):
    ctx = span.get_span_context()
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "name": span.name,
        "attributes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in span.attributes.items()},
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--batches", type=int, default=10, help="batches to send; 0: until --stop-file exists")
    p.add_argument("--stop-file", help="finish the batch in hand and stop once this file exists")
    p.add_argument("--spans", type=int, default=5)
    p.add_argument("--spans-per-trace", type=int, default=1, help="spans per trace (a root and its children)")
    p.add_argument("--prefix", default="run")
    p.add_argument("--service", default="tracespool-test-client")
    p.add_argument("--keys", action="store_true", help="send an idempotency-key per batch")
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--attempt-timeout", type=float, default=10.0)
    p.add_argument("--deadline", type=float, default=60.0, help="seconds to keep retrying a batch")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE sent with every export")
    p.add_argument("--ca-file", help="CA bundle to verify an https:// endpoint with")
    p.add_argument("--client-cert", help="client certificate (PEM), for mTLS")
    p.add_argument("--client-key", help="its private key (PEM)")
    p.add_argument("--attributes-json", help="a JSON file of attributes per scope to put on every span (see make_batches)")
    p.add_argument("--max-attributes", type=int, default=0, help="the SDK's attribute limit per span (0: its default)")
    p.add_argument("--sdk-encoding", help="write the SDK's own protobuf encoding of each acknowledged batch to <this>.<n>.pb")
    args = p.parse_args()

    # The exporters' warnings go to stderr (the tests watch them) and are counted.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    codes = Codes()
    logging.getLogger("opentelemetry").addHandler(codes)
    logging.getLogger("opentelemetry").setLevel(logging.INFO)

    make = batch_maker(args)
    start = time.time()
    failures = 0
    shared = None if args.keys else exporter(args, None)
    n = -1
    while True:
        n += 1
        if args.batches and n >= args.batches:
            break
        if args.stop_file and os.path.exists(args.stop_file):
            break
        batch = make(n)
        key = f"{args.prefix}-batch-{n}" if args.keys else None
        while True:
            exp = shared or exporter(args, key)
            try:
                result = exp.export(batch)
            except Exception as e:  # the exporters should not raise, but never lose a batch to it
                print(f"export raised: {e!r}", file=sys.stderr)
                result = None
            finally:
                if shared is None:
                    exp.shutdown()
            if result == SpanExportResult.SUCCESS:
                if args.sdk_encoding:
                    with open(f"{args.sdk_encoding}.{n}.pb", "wb") as f:
                        f.write(encode_spans(batch).SerializeToString())
                print(json.dumps({"batch": n, "key": key, "t": time.time(), "spans": [describe(s) for s in batch]}), flush=True)
                break
            failures += 1
            if time.time() - start > args.deadline:
                print(json.dumps({"done": False, "failures": failures, "codes": codes.codes, "gave_up": n}), flush=True)
                sys.exit(1)
            time.sleep(0.2)
        if args.pause:
            time.sleep(args.pause)
    if shared is not None:
        shared.shutdown()
    print(json.dumps({"done": True, "failures": failures, "codes": codes.codes, "batches": n}), flush=True)


if __name__ == "__main__":
    main()
