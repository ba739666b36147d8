/**
 * The refusal table in `src/sessions/refusals.ts` is the single source: the
 * README's table says the same, and `/metrics` pre-exports every label.
 */
import assert from "node:assert/strict";
import { ERROR_TYPES, REFUSALS } from "../src/sessions/refusals.ts";
import { parsePrometheusText } from "../src/cli/prometheus_text.ts";
import { ROOT, startTestServer } from "./_helpers.ts";

/** `(error_type, answer)` pairs of the README's refusal table. */
function readmeRefusals(): Set<string> {
  const readme = Deno.readTextFileSync(`${ROOT}README.md`);
  const section = readme.slice(
    readme.indexOf("### Refusals and close codes"),
  );
  const tableStart = section.indexOf("\n|") + 1;
  const table = section.slice(tableStart, section.indexOf("\n\n", tableStart));
  const pairs = new Set<string>();
  for (const line of table.split("\n").slice(2)) {
    const cells = line.split("|").map((c) => c.trim());
    const answer = cells[2] ?? "";
    const errorType = /^`([a-z_]+)`$/.exec(cells[3] ?? "")?.[1];
    assert.ok(errorType, `no error_type in README row: ${line}`);
    const close = /^close `(\d{4})`/.exec(answer)?.[1];
    const status = /^HTTP `(\d{3})`/.exec(answer)?.[1];
    const drop = answer.startsWith("the connection ends");
    const kind = close
      ? `close ${close}`
      : status
      ? `http ${status}`
      : drop
      ? "drop"
      : "frame";
    pairs.add(`${errorType} ${kind}`);
  }
  return pairs;
}

Deno.test("the README's refusal table matches the refusal module, row for row", () => {
  const fromModule = new Set(
    Object.values(REFUSALS).map((r) =>
      `${r.errorType} ${
        r.kind === "close"
          ? `close ${r.code}`
          : r.kind === "http"
          ? `http ${r.status}`
          : r.kind
      }`
    ),
  );
  assert.deepEqual(
    [...readmeRefusals()].sort(),
    [...fromModule].sort(),
  );
});

Deno.test("every error_type is exported at 0 before the first refusal", async () => {
  await using server = await startTestServer();
  const { samples } = parsePrometheusText(await server.metrics());
  const exported = samples
    .filter((s) => s.name === "websocket_errors_total")
    .map((s) => [s.labels.error_type, s.value]);
  assert.deepEqual(
    exported.sort(),
    ERROR_TYPES.map((type) => [type, 0]).sort(),
  );
});
