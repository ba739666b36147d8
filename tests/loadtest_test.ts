/**
 * The loadtest subcommand against a real server: counts checked, report
 * shape; with --reconnect, clients that follow a restart and a server that
 * loses or repeats counts.
 */
import assert from "node:assert/strict";
import { failed, formatReport, runLoadtest } from "../src/cli/loadtest.ts";
import {
  DENO,
  metricValue,
  ROOT,
  startRedis,
  startTestServer,
  type TestServer,
  until,
  within,
} from "./_helpers.ts";

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

Deno.test("loadtest --reconnect follows a restart at the same address: no count lost or repeated", async () => {
  await using redis = await startRedis();
  const blue = await startTestServer({ REDIS_URL: redis.url, COLOR: "blue" });
  const ready = async (srv: TestServer) =>
    (await fetch(srv.http("/readyz")).then(async (r) => {
      await r.body?.cancel();
      return r.status;
    })) === 200;
  await until(() => ready(blue), "blue ready");
  const stop = new AbortController();
  const run = runLoadtest({
    url: blue.ws(),
    connections: 50,
    messages: 0,
    rate: 20,
    ramp: 0,
    connectConcurrency: 50,
    holdS: 0,
    timeoutS: 30,
    payload: "hello",
    durationS: 30,
    reconnect: true,
    reconnectBackoffMs: 50,
    signal: stop.signal,
  });
  const received = async (srv: TestServer) =>
    metricValue(await srv.metrics(), "websocket_messages_total", {
      type: "received",
    });
  await until(async () => await received(blue) >= 200, "traffic on blue");
  await blue.server.drain("test");
  // A new process on the same address: the clients' retries find it.
  await using green = await startTestServer({
    REDIS_URL: redis.url,
    COLOR: "green",
    PORT: String(blue.port),
  });
  await until(() => ready(green), "green ready");
  await until(
    async () =>
      metricValue(await green.metrics(), "websocket_session_resumes_total") ===
        50 && await received(green) >= 200,
    "every client resumed on green, and traffic",
  );
  stop.abort();
  const report = await run;
  assert.deepEqual(report.errors, {});
  assert.equal(report.connections.opened, 50);
  const rc = report.reconnect!;
  assert.equal(rc.lost, 0);
  assert.equal(rc.repeated, 0);
  assert.deepEqual(rc.closes, { "1001": 50 });
  assert.equal(rc.byes, 50);
  assert.equal(rc.resumes, 50);
  assert.equal(rc.clientsResumed, 50);
  assert.equal(rc.gaps, 50);
  assert.ok(rc.gapMs.p50 > 0 && rc.gapMs.p50 <= rc.gapMs.max);
  // Every frame sent is accounted for: answered, or settled at a close.
  assert.equal(
    report.messages.sent,
    report.messages.ok + rc.uncounted + rc.unanswered,
  );
  // Blue and green each received 200 frames; each may have counted one
  // frame per client without answering it (in flight at the bye, or at the
  // stop).
  assert.ok(report.messages.ok >= 300, `${report.messages.ok} answered`);
  assert.equal(failed(report), false);
  assert.match(
    formatReport(report),
    /^continuity {3}lost 0, repeated 0; at closes 0 frames not counted, 0 counted without a reply$/m,
  );
});

/**
 * A server whose sessions say goodbye after their third frame, then resume
 * with their count off by `skew` (0: a correct server).
 */
function byeAfterThree(skew: number) {
  const counts = new Map<string, number>();
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    (req) => {
      const id = new URL(req.url).searchParams.get("session_uuid")!;
      const { socket, response } = Deno.upgradeWebSocket(req, {
        protocol: "sockeye.v1",
      });
      const resumed = counts.has(id);
      if (resumed) counts.set(id, counts.get(id)! + skew);
      else counts.set(id, 0);
      let closing = false;
      socket.onopen = () =>
        socket.send(
          `{"type": "session", "session_uuid": "${id}", "count": ${
            counts.get(id)
          }, "resumed": ${resumed}}`,
        );
      socket.onmessage = () => {
        if (closing) return; // as sockeye: frames after the bye are not counted
        const n = counts.get(id)! + 1;
        counts.set(id, n);
        socket.send(`{"count": ${n}}`);
        if (n === 3 && !resumed) {
          closing = true;
          socket.send(`{"bye": true, "total": ${n}}`);
          socket.close(1001, "going away");
        }
      };
      return response;
    },
  );
  return {
    url: `ws://127.0.0.1:${server.addr.port}/ws/chat/`,
    counts,
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
    },
  };
}

Deno.test("loadtest --reconnect counts lost and repeated counts, and resends what was not counted", async () => {
  const run = (url: string) =>
    runLoadtest({
      url,
      connections: 10,
      messages: 6,
      rate: 0,
      ramp: 0,
      connectConcurrency: 10,
      holdS: 0,
      timeoutS: 20,
      payload: "hello",
      reconnect: true,
    });
  {
    await using good = byeAfterThree(0);
    const report = await run(good.url);
    const rc = report.reconnect!;
    assert.equal(rc.lost, 0);
    assert.equal(rc.repeated, 0);
    assert.equal(rc.byes, 10);
    assert.deepEqual(rc.closes, { "1001": 10 });
    assert.equal(rc.clientsResumed, 10);
    assert.equal(rc.gaps, 10);
    // A frame in flight at the bye was not counted: sent again after
    // resuming, so each session ends at exactly 6.
    assert.deepEqual([...good.counts.values()], Array(10).fill(6));
    assert.equal(rc.uncounted, 10);
    assert.equal(report.messages.sent, 70);
    assert.equal(report.messages.ok, 60);
    assert.equal(failed(report), false);
  }
  {
    await using forgetful = byeAfterThree(-1);
    const report = await run(forgetful.url);
    assert.equal(report.reconnect!.lost, 10);
    assert.equal(report.reconnect!.repeated, 0);
    assert.equal(failed(report), true);
  }
  {
    await using doubling = byeAfterThree(+1);
    const report = await run(doubling.url);
    assert.equal(report.reconnect!.lost, 0);
    assert.equal(report.reconnect!.repeated, 10);
    assert.equal(failed(report), true);
    assert.match(formatReport(report), /^continuity {3}lost 0, repeated 10;/m);
  }
});

Deno.test("sockeye loadtest --reconnect --duration: SIGINT ends the run with its JSON report", async () => {
  await using srv = await startTestServer();
  const child = new Deno.Command(DENO, {
    args: [
      "run",
      "-A",
      `${ROOT}main.ts`,
      "loadtest",
      "--url",
      srv.ws(),
      "-c",
      "5",
      "--rate",
      "20",
      "--duration",
      "60",
      "--reconnect",
      "--reconnect-backoff",
      "100",
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  await until(
    async () =>
      metricValue(await srv.metrics(), "websocket_messages_total", {
        type: "received",
      }) >= 20,
    "traffic",
  );
  child.kill("SIGINT");
  const out = await within(output, "the report after SIGINT");
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.ok(report.durationSeconds < 30);
  assert.equal(report.connections.opened, 5);
  assert.ok(report.messages.ok >= 20);
  assert.deepEqual(report.reconnect.closes, {});
  assert.equal(report.reconnect.lost, 0);
  assert.equal(report.reconnect.gapMs.p50, null);

  // Each client owns its session: a session in the URL is a mistake.
  const bad = await new Deno.Command(DENO, {
    args: [
      "run",
      "-A",
      `${ROOT}main.ts`,
      "loadtest",
      "--reconnect",
      "--url",
      `${srv.ws()}?session_uuid=shared`,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(bad.code, 2);
  assert.match(
    new TextDecoder().decode(bad.stderr),
    /cannot use --url .* with --reconnect/,
  );
});
