/**
 * The command line as a user meets it: `deno run -A main.ts …` as a
 * subprocess; help, exit codes 0/1/2, one-line errors, `config`, and
 * `monitor --once --json` against a real server.
 */
import assert from "node:assert/strict";
import { SETTINGS, type SettingSpec } from "../src/settings.ts";
import { VERSION } from "../src/version.ts";
import {
  type CommandRun as Run,
  runSockeye as sockeye,
  spawnServer,
  startTestServer,
  TestClient,
  within,
} from "./_helpers.ts";

const COMMANDS = [
  "serve",
  "healthcheck",
  "loadtest",
  "monitor",
  "config",
  "version",
  "help",
];

Deno.test("every subcommand's --help and -h exits 0 with its usage", async () => {
  const runs = await Promise.all(COMMANDS.flatMap((command) => [
    sockeye([command, "--help"]).then((r) => ({ command, r })),
    sockeye([command, "-h"]).then((r) => ({ command, r })),
    sockeye(["help", command]).then((r) => ({ command, r })),
  ]));
  for (const { command, r } of runs) {
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^Usage: sockeye ${command}\\b`));
    assert.match(r.stdout, /-h, --help/);
    assert.equal(r.stderr, "");
  }
  for (const args of [["--help"], ["-h"], ["help"]]) {
    const r = await sockeye(args);
    assert.equal(r.code, 0);
    for (const command of COMMANDS) {
      assert.match(r.stdout, new RegExp(`^  ${command} `, "m"));
    }
  }
});

Deno.test("serve --help lists every setting with its default and binds nothing", async () => {
  // Holding the port: a server that tried to start would fail with exit 1.
  using held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String((held.addr as Deno.NetAddr).port);
  const r = await within(
    sockeye(["serve", "--help"], { PORT: port, HOST: "127.0.0.1" }),
    "serve --help to exit",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.ok(!r.stdout.includes('"level"'), "no log line: nothing started");
  for (const spec of Object.values(SETTINGS) as SettingSpec[]) {
    const shown = typeof spec.default === "string"
      ? spec.default
      : spec.defaultText ?? "unset";
    assert.match(
      r.stdout,
      new RegExp(`^  ${spec.env} +${shown.replaceAll(".", "\\.")} +\\S`, "m"),
      spec.env,
    );
  }
  assert.match(r.stdout, /METRICS_TOKEN_FILE/);
  assert.match(r.stdout, /REDIS_URL_FILE/);
});

Deno.test("an unknown option, argument or command exits 2 with one line naming it", async () => {
  const cases: [string[], RegExp][] = [
    [
      ["loadtest", "--connectons", "5"],
      /^sockeye: unknown option "--connectons" for loadtest \(did you mean "--connections"\?\); see "sockeye loadtest --help"$/,
    ],
    [["monitor", "--jsn"], /unknown option "--jsn" for monitor.*"--json"/],
    [["loadtest", "-json"], /unknown option "-json" for loadtest.*"--json"/],
    [["serve", "--bogus"], /unknown option "--bogus" for serve/],
    [["serve", "--port", "9000"], /"--port" for serve.*PORT=/],
    [["serve", "now"], /unexpected argument "now" for serve/],
    [["config", "--verbose"], /unknown option "--verbose" for config/],
    [["version", "x"], /unexpected argument "x" for version/],
    [["loadtest", "--url"], /option "--url" for loadtest needs a value/],
    [["config", "--json=yes"], /option "--json" for config takes no value/],
    [["sevre"], /^sockeye: unknown command "sevre" \(did you mean "serve"\?\)/],
    [["--bogus"], /^sockeye: unknown option "--bogus"; see "sockeye help"$/],
    [["help", "nope"], /unknown command "nope"/],
  ];
  const runs = await Promise.all(cases.map(([args]) => sockeye(args)));
  runs.forEach((r, i) => {
    const [args, pattern] = cases[i]!;
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stdout, "", args.join(" "));
    const lines = r.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, pattern);
  });
});

Deno.test("-V, --version and version print the version", async () => {
  for (const args of [["-V"], ["--version"], ["version"]]) {
    const r = await sockeye(args);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `${VERSION}\n`);
  }
});

Deno.test("healthcheck: 0 when healthy, 1 when not answering, 2 on a bad command line", async () => {
  await using srv = await startTestServer();
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (closed.addr as Deno.NetAddr).port;
  closed.close();
  const [ok, down, bogus, notUrl, badTimeout, byPort] = await Promise.all([
    sockeye(["healthcheck", srv.http("/healthz")]),
    sockeye(["healthcheck", `http://127.0.0.1:${deadPort}/healthz`]),
    sockeye(["healthcheck", "--bogus"]),
    sockeye(["healthcheck", "not a url"]),
    sockeye(["healthcheck", "--timeout", "soon", srv.http("/healthz")]),
    sockeye(["healthcheck"], { PORT: String(srv.port) }),
  ]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /unreachable/);
  assert.equal(bogus.code, 2);
  assert.match(bogus.stderr, /unknown option "--bogus" for healthcheck/);
  assert.equal(notUrl.code, 2);
  assert.match(notUrl.stderr, /cannot parse URL "not a url"/);
  assert.equal(badTimeout.code, 2);
  assert.match(badTimeout.stderr, /--timeout "soon"/);
  assert.equal(byPort.code, 0, byPort.stderr);
});

Deno.test("loadtest against a dead port exits 1 and reports n/a, not 0 ms", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `ws://127.0.0.1:${(closed.addr as Deno.NetAddr).port}/ws/chat/`;
  closed.close();
  const [text, json] = await Promise.all([
    sockeye(["loadtest", "--url", url, "-c", "3", "-n", "2"]),
    sockeye(["loadtest", "--url", url, "-c", "1", "-n", "1", "--json"]),
  ]);
  assert.equal(text.code, 1, text.stderr);
  assert.match(text.stdout, /^connections +0\/3 opened/m);
  assert.match(text.stdout, /^latency +p50 n\/a, p90 n\/a, p99 n\/a/m);
  assert.match(text.stdout, /connect_failed=3/);
  assert.equal(json.code, 1);
  const report = JSON.parse(json.stdout);
  assert.equal(report.latencyMs.p50, null);
  assert.equal(report.connections.opened, 0);
});

function monitorOnce(url: string, interval: string): Promise<Run> {
  return sockeye([
    "monitor",
    "--url",
    url,
    "--once",
    "--json",
    "--interval",
    interval,
  ]);
}

Deno.test("monitor --once --json reports messages/s, latency and errors by type, and none of its own probes", async () => {
  await using srv = await startTestServer({ COLOR: "green" });
  await using c = await TestClient.open(srv.ws());
  let running = true;
  const traffic = (async () => {
    while (running) await c.ask("m");
  })();
  // A binary frame is refused with 1003 and counted as binary_frame.
  const refusals = (async () => {
    while (running) {
      await using bad = await TestClient.open(srv.ws());
      bad.ws.send(new Uint8Array([1]));
      await within(bad.closed, "the 1003 close");
    }
  })();
  const busy = await monitorOnce(srv.http(""), "1");
  running = false;
  await traffic;
  await refusals;
  assert.equal(busy.code, 0, busy.stderr);
  const lines = busy.stdout.trimEnd().split("\n");
  assert.equal(lines.length, 1, "one sample");
  const [i] = JSON.parse(lines[0]!).instances;
  assert.equal(i.color, "green");
  assert.equal(i.health, "healthy");
  assert.equal(i.readiness, "ready");
  assert.equal(i.store, "memory ok");
  assert.ok(i.messages_per_second > 0, JSON.stringify(i));
  const { p50, p95, p99 } = i.reply_latency_seconds;
  assert.ok(p50 > 0 && p50 <= p95 && p95 <= p99, JSON.stringify(i));
  assert.ok(i.errors_per_second.binary_frame > 0, JSON.stringify(i));
  assert.ok(
    i.fastest.some((m: { series: string }) =>
      m.series.startsWith("websocket_messages_total{")
    ),
    JSON.stringify(i.fastest),
  );

  // Idle, the only HTTP traffic is the monitor's own: none of it shows.
  const idle = await monitorOnce(srv.http(""), "0.5");
  assert.equal(idle.code, 0, idle.stderr);
  const [quiet] = JSON.parse(idle.stdout).instances;
  assert.equal(quiet.messages_per_second, 0);
  assert.equal(quiet.reply_latency_seconds, null);
  assert.deepEqual(quiet.errors_per_second, {});
  for (const m of quiet.fastest as { series: string }[]) {
    assert.doesNotMatch(m.series, /^http_/, JSON.stringify(quiet.fastest));
  }

  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dead = `http://127.0.0.1:${(closed.addr as Deno.NetAddr).port}`;
  closed.close();
  const down = await monitorOnce(dead, "0.1");
  assert.equal(down.code, 1);
  const [gone] = JSON.parse(down.stdout).instances;
  assert.equal(gone.up, false);
  assert.equal(gone.health, "unreachable");
  assert.equal(gone.messages_per_second, null);
});

Deno.test("config prints every setting with secrets redacted, exit 0", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/token`, "file-s3cret\n");
    const env = {
      PORT: "9100",
      REDIS_URL: "redis://:hunter2@127.0.0.1:6379/0",
      METRICS_TOKEN_FILE: `${dir}/token`,
      LOG_LEVEL: "WARNING",
    };
    const [text, json] = await Promise.all([
      sockeye(["config"], env),
      sockeye(["config", "--json"], env),
    ]);
    assert.equal(text.code, 0, text.stderr);
    for (const secret of ["hunter2", "file-s3cret"]) {
      assert.ok(!text.stdout.includes(secret), secret);
      assert.ok(!json.stdout.includes(secret), secret);
    }
    const lines = text.stdout.trimEnd().split("\n");
    assert.equal(lines.length, Object.keys(SETTINGS).length);
    assert.match(text.stdout, /^PORT=9100$/m);
    assert.match(text.stdout, /^HOST=0\.0\.0\.0 +# default$/m);
    assert.match(text.stdout, /^ALLOWED_ORIGINS= +# default: unset$/m);
    assert.match(
      text.stdout,
      /^REDIS_URL=redis:\/\/:\*\*\*@127\.0\.0\.1:6379\/0$/m,
    );
    assert.match(
      text.stdout,
      /^METRICS_TOKEN=\*\*\* +# from METRICS_TOKEN_FILE$/m,
    );
    assert.match(text.stdout, /^LOG_LEVEL=warning$/m);
    const parsed = JSON.parse(json.stdout);
    assert.deepEqual(parsed.PORT, { value: 9100, source: "environment" });
    assert.deepEqual(parsed.HEARTBEAT_INTERVAL_S, {
      value: 30,
      source: "default",
    });
    assert.deepEqual(parsed.METRICS_TOKEN, { value: "***", source: "file" });
    assert.deepEqual(parsed.ALLOWED_ORIGINS, {
      value: null,
      source: "default",
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config and serve list every bad setting at once, exit 2", async () => {
  const env = { PORT: "x", LOG_LEVEL: "loud", HOST: "127.0.0.1" };
  const [config, serve] = await Promise.all([
    sockeye(["config"], env),
    sockeye(["serve"], env),
  ]);
  for (const r of [config, serve]) {
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, "");
    assert.deepEqual(r.stderr.trimEnd().split("\n"), [
      'sockeye: Cannot parse PORT "x": expected an integer from 0 to 65535',
      'sockeye: Cannot parse LOG_LEVEL "loud": expected one of debug, info, warning, error, critical',
    ]);
  }
});

Deno.test("a misspelt variable gets one warning line at start; config names it on stderr", async () => {
  await using proc = await spawnServer({ REDIS_URI: "redis://127.0.0.1:1" });
  const line = await proc.waitForLine(
    (l) => l.level === "warning" && l.variable === "REDIS_URI",
    "the typo warning",
  );
  assert.equal(line.suggestion, "REDIS_URL");
  assert.match(String(line.message), /REDIS_URI.*REDIS_URL/);
  assert.ok(
    !proc.lines.some((l) => l.includes('"variable":"HOME"')),
    "no warning for HOME",
  );
  const config = await sockeye(["config"], { HEARTBEAT_INTERVAL: "5" });
  assert.equal(config.code, 0);
  assert.match(
    config.stderr,
    /unknown variable HEARTBEAT_INTERVAL has no effect \(did you mean HEARTBEAT_INTERVAL_S\?\)/,
  );
});
