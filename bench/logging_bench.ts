/**
 * The cost of one connection log line, by stage: `deno bench bench/logging_bench.ts`.
 */
import type { LogRecord } from "@logtape/logtape";
import { redactByField } from "@logtape/redaction";
import {
  jsonFormatter,
  REDACTED_FIELDS,
} from "../src/observability/logging.ts";

const record: LogRecord = {
  category: ["sockeye", "ws"],
  level: "info",
  message: ["WebSocket disconnected"],
  rawMessage: "WebSocket disconnected",
  timestamp: Date.now(),
  properties: {
    connection_id: crypto.randomUUID(),
    session_uuid: crypto.randomUUID(),
    request_id: crypto.randomUUID(),
    remote_addr: "127.0.0.1",
    user_agent: "Deno/2.9.6",
    close_code: 1000,
    close_reason: "",
    duration_ms: 1234,
    messages: 20,
  },
};
const format = jsonFormatter("blue");
const plain = (r: LogRecord) =>
  JSON.stringify({
    timestamp: new Date(r.timestamp).toISOString(),
    ...r.properties,
  }) + "\n";
let sink = "";
const byField = redactByField((r: LogRecord) => {
  sink = plain(r);
}, { fieldPatterns: REDACTED_FIELDS, action: () => "[REDACTED]" });

Deno.bench(
  "JSON.stringify of the fields (baseline)",
  { baseline: true },
  () => {
    sink = plain(record);
  },
);
Deno.bench("jsonFormatter (fields + pattern redaction)", () => {
  sink = format(record);
});
Deno.bench("redactByField wrapper", () => {
  byField(record);
});
// Keep the results observable so the work is not optimised away.
(globalThis as { lastLine?: string }).lastLine = sink;
