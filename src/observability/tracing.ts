/**
 * Tracing through `npm:@opentelemetry/api`, backed by Deno's built-in
 * OpenTelemetry (`OTEL_DENO=true`): no SDK. Deno traces `Deno.serve`
 * (continuing a client's `traceparent`), samples by `OTEL_TRACES_SAMPLER`,
 * and exports OTLP over HTTP.
 *
 * sockeye adds, as children of the upgrade request's server span:
 * - `WebSocket /ws/chat/`: one span per connection, open to close;
 * - `WebSocket message`: a child per received frame, for a fraction
 *   `TRACE_FRAME_RATIO` of the frames of a sampled connection;
 * and the root spans `sockeye startup` and `sockeye drain`.
 *
 * With tracing off (the default) no span is created on the frame path: the
 * cost there is one comparison.
 *
 * Attribute names follow the OpenTelemetry semantic conventions where one
 * exists (`http.route`, `session.id`, `client.address`,
 * `user_agent.original`, `network.protocol.name`); the rest are namespaced
 * `sockeye.*`.
 *
 * @module
 */
import {
  type Attributes,
  context,
  type Span,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import { VERSION } from "../version.ts";

const tracer = trace.getTracer("sockeye", VERSION);

/** Whether Deno's OpenTelemetry is on, and how many frames get a span. */
export interface TracingOptions {
  /** `OTEL_DENO` is set: spans are exported. */
  readonly enabled: boolean;
  /** Fraction (0–1) of a sampled connection's frames that get a span. */
  readonly frameRatio: number;
}

/**
 * The methods OpenTelemetry's HTTP semantic conventions call known: those of
 * RFC 9110 and PATCH (RFC 5789). Case-sensitive, as methods are.
 */
export const KNOWN_HTTP_METHODS: ReadonlySet<string> = new Set([
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "CONNECT",
  "OPTIONS",
  "TRACE",
  "PATCH",
]);

/**
 * Names the active server span after its route, following the HTTP semantic
 * conventions: span name `{method} {http.route}`, or `{method}` when no route
 * matched (no `http.route` then); an unknown method becomes `_OTHER` in
 * `http.request.method` (the original in `http.request.method_original`) and
 * `HTTP` in the span name, so span names stay a bounded set.
 *
 * @param method HTTP method as received.
 * @param route Route template, e.g. `/ws/chat/`; `undefined` when none matched.
 */
export function nameServerSpan(
  method: string,
  route: string | undefined,
): void {
  const span = trace.getActiveSpan();
  if (span === undefined || !span.isRecording()) return;
  const known = KNOWN_HTTP_METHODS.has(method);
  if (!known) {
    span.setAttribute("http.request.method", "_OTHER");
    span.setAttribute("http.request.method_original", method);
  }
  const name = known ? method : "HTTP";
  if (route === undefined) {
    span.updateName(name);
  } else {
    span.setAttribute("http.route", route);
    span.updateName(`${name} ${route}`);
  }
}

/**
 * Marks a span failed: an `exception` event and status ERROR.
 *
 * @param span The span, or `undefined` (then nothing happens).
 * @param errorType The `websocket_errors_total` label of the cause.
 * @param message What went wrong.
 */
export function recordError(
  span: Span | undefined,
  errorType: string,
  message: string,
): void {
  if (span === undefined || !span.isRecording()) return;
  span.recordException({ name: errorType, message });
  span.setAttribute("error.type", errorType);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

/**
 * The span of the current context.
 *
 * @returns The active span (the request's server span in a handler), if recording.
 */
export function activeSpan(): Span | undefined {
  const span = trace.getActiveSpan();
  return span?.isRecording() ? span : undefined;
}

/**
 * Starts a connection's span as a child of the active (upgrade request) span.
 *
 * @param options Whether tracing is on.
 * @param attributes `session.id`, `client.address`, … at open.
 * @returns The span when it is sampled, else `undefined`.
 */
export function startConnectionSpan(
  options: TracingOptions,
  attributes: Attributes,
): Span | undefined {
  if (!options.enabled) return undefined;
  const span = tracer.startSpan("WebSocket /ws/chat/", {
    attributes: { "network.protocol.name": "websocket", ...attributes },
  });
  if (span.isRecording()) return span;
  span.end();
  return undefined;
}

/**
 * Starts a frame's span under its connection's span.
 *
 * @param parent The connection span.
 * @returns The frame span.
 */
export function startFrameSpan(parent: Span): Span {
  return tracer.startSpan(
    "WebSocket message",
    undefined,
    trace.setSpan(context.active(), parent),
  );
}

/**
 * The trace and span ids of a span, for log lines.
 *
 * @param span A recording span.
 * @returns `{trace_id, span_id}` as lower-case hex.
 */
export function logIds(span: Span): { trace_id: string; span_id: string } {
  const ctx = span.spanContext();
  return { trace_id: ctx.traceId, span_id: ctx.spanId };
}

/**
 * Runs `fn` inside a new root span.
 *
 * @param options Whether tracing is on.
 * @param name Span name, e.g. `sockeye drain`.
 * @param fn Receives the span (or `undefined` when off) and returns attributes to set at the end.
 * @param startTime When the span began, if before now (epoch ms).
 * @returns What `fn` returns.
 */
export async function withRootSpan<T>(
  options: TracingOptions,
  name: string,
  fn: (span: Span | undefined) => Promise<T>,
  startTime?: number,
): Promise<T> {
  if (!options.enabled) return await fn(undefined);
  const span = tracer.startSpan(name, { root: true, startTime });
  try {
    return await context.with(
      trace.setSpan(context.active(), span),
      () => fn(span),
    );
  } catch (error) {
    span.recordException(error as Error);
    span.setStatus({ code: SpanStatusCode.ERROR });
    throw error;
  } finally {
    span.end();
  }
}
