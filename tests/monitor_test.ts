/**
 * `sockeye monitor` against a running service and one that is down.
 */
import assert from "node:assert/strict";
import { DENO, ROOT, startTestServer, TestClient } from "./_helpers.ts";

async function monitor(args: string[], stdin?: string) {
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, "monitor", ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: stdin === undefined ? "null" : "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

const ERROR_LINE = JSON.stringify({
  timestamp: "2026-11-23T10:00:00.000Z",
  level: "error",
  logger: "sockeye.redis",
  message:
    "Redis unavailable: frames are answered unavailable until it returns",
  color: "green",
});
const INFO_LINE = JSON.stringify({
  timestamp: "2026-11-23T10:00:01.000Z",
  level: "info",
  logger: "sockeye.ws",
  message: "WebSocket connected",
  color: "green",
});

Deno.test("monitor shows health, readiness, connections, moving counters and error lines", async () => {
  await using srv = await startTestServer({ COLOR: "green" });
  await using c = await TestClient.open(srv.ws());
  const dir = await Deno.makeTempDir();
  try {
    const logFile = `${dir}/sockeye.log`;
    await Deno.writeTextFile(logFile, `${INFO_LINE}\n${ERROR_LINE}\n`);
    let running = true;
    const traffic = (async () => {
      while (running) await c.ask("m");
    })();
    const down = "http://127.0.0.1:1";
    const run = monitor([
      "--url",
      srv.http(""),
      "--url",
      down,
      "--interval",
      "0.3",
      "--duration",
      "1",
      "--logs",
      logFile,
    ]);
    const result = await run;
    running = false;
    await traffic;
    assert.equal(result.code, 0, result.stderr);
    const out = result.stdout;
    // Plain blocks, no terminal escapes, when stdout is not a terminal.
    assert.ok(!out.includes("\x1b["));
    assert.match(
      out,
      /^green\s+healthy\s+ready\s+1\s+http:\/\/127\.0\.0\.1:\d+$/m,
    );
    assert.match(
      out,
      /^\?\s+unreachable\s+unreachable\s+-\s+http:\/\/127\.0\.0\.1:1$/m,
    );
    assert.match(
      out,
      /websocket_messages_total\{color="green",type="received"\}/,
    );
    assert.match(out, /green ERROR sockeye\.redis: Redis unavailable/);
    assert.ok(!out.includes("WebSocket connected"), "info lines are not shown");
    assert.ok(
      (out.match(/^sockeye monitor /gm) ?? []).length >= 3,
      "refreshed",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("monitor --logs - reads docker compose logs from stdin; --logs-only hides instances", async () => {
  const result = await monitor(
    ["--logs", "-", "--logs-only", "--interval", "0.2", "--duration", "0.5"],
    `app_green-1  | ${INFO_LINE}\napp_green-1  | ${ERROR_LINE}\nplain text ERROR: disk full\n`,
  );
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /green ERROR sockeye\.redis: Redis unavailable/);
  assert.match(result.stdout, /plain text ERROR: disk full/);
  assert.ok(!result.stdout.includes("HEALTH"));
});

Deno.test("monitor --metrics-only against a service that is down still prints, exit 0", async () => {
  const result = await monitor([
    "--url",
    "http://127.0.0.1:1",
    "--metrics-only",
    "--duration",
    "0.1",
  ]);
  assert.equal(result.code, 0);
  assert.match(result.stdout, /unreachable/);
  assert.ok(!result.stdout.includes("ERROR LINES"));
  const bad = await monitor(["--interval", "zero"]);
  assert.equal(bad.code, 2);
});
