/**
 * The loadtest subcommand against a real server: counts checked, report shape.
 */
import assert from "node:assert/strict";
import { runLoadtest } from "../src/cli/loadtest.ts";
import { DENO, ROOT, startTestServer } from "./_helpers.ts";

Deno.test("runLoadtest opens every socket together and checks every count", async () => {
  await using srv = await startTestServer();
  const report = await runLoadtest({
    url: srv.ws(),
    connections: 50,
    messages: 20,
    rate: 0,
    ramp: 0,
    connectConcurrency: 25,
    holdS: 0,
    timeoutS: 30,
    payload: "hello",
  });
  assert.deepEqual(report.errors, {});
  assert.equal(report.connections.opened, 50);
  assert.equal(report.connections.peakOpen, 50);
  assert.equal(report.messages.sent, 1000);
  assert.equal(report.messages.ok, 1000);
  assert.ok(report.messages.perSecond > 0);
  assert.ok(report.latencyMs.p50 <= report.latencyMs.p99);
  assert.ok(report.latencyMs.p99 <= report.latencyMs.max);
});

Deno.test("runLoadtest at a fixed rate, and errors are counted by kind", async () => {
  await using srv = await startTestServer({ MAX_CONNECTIONS: "3" });
  const report = await runLoadtest({
    url: srv.ws(),
    connections: 5,
    messages: 5,
    rate: 50,
    ramp: 0,
    connectConcurrency: 5,
    holdS: 0,
    timeoutS: 30,
    payload: "hello",
  });
  assert.equal(report.connections.opened, 3);
  assert.equal(report.errors.connect_failed, 2);
  assert.equal(report.messages.ok, 15);
});

Deno.test("sockeye loadtest --json prints one parseable report", async () => {
  await using srv = await startTestServer();
  const out = await new Deno.Command(DENO, {
    args: [
      "run",
      "-A",
      `${ROOT}main.ts`,
      "loadtest",
      "--url",
      srv.ws(),
      "-c",
      "10",
      "-n",
      "10",
      "--json",
      "--fail-on-error",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.equal(report.messages.ok, 100);
  const bad = await new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, "loadtest", "-c", "zero"],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(bad.code, 2);
  assert.match(new TextDecoder().decode(bad.stderr), /--connections/);
});
