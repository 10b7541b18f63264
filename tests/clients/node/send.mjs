// Sends one batch of spans with the official OpenTelemetry JavaScript SDK exporter
// named on the command line, and writes the SDK's own protobuf encoding of the same
// spans (otlp-transformer's ProtobufTraceSerializer) to compare with what arrives.
//
//   node send.mjs <http-json|http-proto|grpc> <endpoint> <none|gzip> <out.pb> [quirk]
//
// With a quirk (huge-double, non-finite, lone-surrogate), one span with that value
// only: the values the SDK's encoders write in their own way (the README's quirks).
//
// The spans use every attribute type the SDK takes (strings with unicode, integers
// up to ±(2^53−1), doubles at full precision and at the small extremes, booleans,
// homogeneous arrays), events, links, a tracestate, every span kind, statuses with
// unicode messages, and attribute limits that make dropped counts non-zero.
// Exit 0 once the exporter reports success; 1 with the error otherwise.
import { writeFileSync } from 'node:fs';
import { TracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { trace, context, SpanKind, SpanStatusCode, TraceFlags, createTraceState } from '@opentelemetry/api';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';

const [kind, endpoint, compression, out, quirk] = process.argv.slice(2);
const quirks = {
  'huge-double': { 'huge.double': 1e300 },
  'non-finite': { 'd.nan': NaN, 'd.inf': Infinity, 'd.neginf': -Infinity },
  'lone-surrogate': { 'broken': 'a\ud800b' },
};
if (quirk && !quirks[quirk]) {
  console.error(`unknown quirk ${quirk}`);
  process.exit(2);
}
const exporters = {
  'http-json': async () => new (await import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter({ url: endpoint, compression }),
  'http-proto': async () => new (await import('@opentelemetry/exporter-trace-otlp-proto')).OTLPTraceExporter({ url: endpoint, compression }),
  'grpc': async () => new (await import('@opentelemetry/exporter-trace-otlp-grpc')).OTLPTraceExporter({ url: endpoint, compression }),
};
if (!exporters[kind]) {
  console.error(`unknown exporter ${kind}`);
  process.exit(2);
}

const memory = new InMemorySpanExporter();
const provider = new TracerProvider({
  resource: resourceFromAttributes({ 'service.name': `interop-${kind}-${compression}${quirk ? `-${quirk}` : ''}`, 'host.kind': 'edge', 'ünïcödé.key': 'värde ✓' }),
  spanProcessors: [new SimpleSpanProcessor({ exporter: memory })],
  spanLimits: { attributeCountLimit: 24, eventCountLimit: 3, linkCountLimit: 2 },
});
const tracer = provider.getTracer('tracespool.interop', '1.2.3');

const doubles = [0.1, -8.485828396444299e-16, 1.5e-300, 5e-324, 2.2250738585072014e-308, 1 / 3, -2.718281828459045, 123456.789e-10, 4.9406564584124654e-324, 0.30000000000000004];
const kinds = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER];
const parent = trace.setSpanContext(context.active(), {
  traceId: '5b8efff798038103d269b633813fc60c',
  spanId: 'eee19b7ec3c1b174',
  traceFlags: TraceFlags.SAMPLED,
  traceState: createTraceState('vendor=v1,other=x:y'),
  isRemote: true,
});
let previous;
for (let i = 0; i < (quirk ? 1 : 40); i++) {
  const attributes = quirk ? { ...quirks[quirk] } : {
    'str': `välue ${i} — 日本語 ✓`,
    'int.max': 9007199254740991,
    'int.min': -9007199254740991,
    'int.i': i * 1000003,
    'double': doubles[i % doubles.length] * (i + 1),
    'double.exact': doubles[i % doubles.length],
    'bool': i % 2 === 0,
    'arr.str': ['a', `b${i}`, 'ç'],
    'arr.int': [1, -2, 9007199254740991],
    'arr.double': [0.5, doubles[(i + 3) % doubles.length]],
    'arr.bool': [true, false],
    'empty': '',
  };
  // Past the attribute limit on some spans: dropped counts.
  if (!quirk && i % 7 === 0) {
    for (let k = 0; k < 30; k++) attributes[`extra.${k}`] = k;
  }
  const links = previous ? [{ context: previous.spanContext(), attributes: { 'link.n': i, 'link.d': doubles[i % doubles.length] } }] : [];
  const span = tracer.startSpan(`op ${i} ✓`, { kind: kinds[i % kinds.length], attributes, links }, i % 3 === 0 ? parent : undefined);
  for (let e = 0; e < (i % 5); e++) {
    span.addEvent(`event ${e} — ü`, { 'e.n': e, 'e.d': doubles[(i + e) % doubles.length], 'e.s': 'ß' });
  }
  if (i % 4 === 1) span.setStatus({ code: SpanStatusCode.ERROR, message: `échec ✗ ${i} 失败` });
  if (i % 4 === 2) span.setStatus({ code: SpanStatusCode.OK });
  span.end();
  previous = span;
}
// The simple processor hands spans over asynchronously (SDK 2.12).
await provider.forceFlush();
const spans = memory.getFinishedSpans();
writeFileSync(out, ProtobufTraceSerializer.serializeRequest(spans));
const exporter = await exporters[kind]();
exporter.export(spans, (result) => {
  if (result.code === 0) {
    exporter.shutdown().then(() => process.exit(0));
  } else {
    // The error and what the receiver answered (status, body).
    const e = result.error ?? {};
    console.error(`export failed: ${e} (code ${e.code}) ${e.data ?? ''}`);
    process.exit(1);
  }
});
