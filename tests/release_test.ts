// deno-lint-ignore-file no-console -- the test prints the release's figures (gap, counts) on stdout
/**
 * A release under load: clients stream through Debian's nginx (the shipped
 * config) to blue with sessions in Redis, `sockeye loadtest --reconnect`
 * checking every count, while `sockeye promote green` runs. No count may be
 * lost or repeated; every client gets its bye and 1001 from blue, resumes on
 * green, and blue comes back as the ready standby.
 *
 * `RELEASE_CLIENTS` sets the number of clients: 500 in the suite, which
 * runs tests in parallel on machines with 2 cores (2,000 there slow the
 * timing-sensitive tests beside it); `deno task release-check` runs this
 * test alone with 2,000 (about 8 s), and
 * `RELEASE_CLIENTS=5000 deno test --allow-all tests/release_test.ts` with
 * 5,000 (about 15 s).
 */
import assert from "node:assert/strict";
import {
  backgroundServer,
  DENO,
  metricValue,
  ROOT,
  spawnServer,
  startNginx,
  startRedis,
  until,
  within,
} from "./_helpers.ts";

const CLIENTS = Number(Deno.env.get("RELEASE_CLIENTS") || 500);
const RATE = 2; // frames per second per client
// Waits grow with the clients: ~5 ms each on a busy 2-core machine.
const WAIT_MS = 20_000 + 5 * CLIENTS;
const decoder = new TextDecoder();

async function status(port: number, path: string) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`);
    return { status: res.status, body: await res.json() };
  } catch {
    return undefined;
  }
}

Deno.test(`a release under load: ${CLIENTS} clients stream through nginx while promote runs; nothing lost or repeated`, async () => {
  await using redis = await startRedis();
  const settings = {
    REDIS_URL: redis.url,
    DRAIN_DELAY_S: "1",
    SHUTDOWN_TIMEOUT_S: "20",
  };
  // Descriptors for every client, whatever the shell's default limit.
  const fds = { maxFds: Math.max(8192, CLIENTS + 1024) };
  await using blue = await spawnServer({ COLOR: "blue", ...settings }, fds);
  await using green = await spawnServer({ COLOR: "green", ...settings }, fds);
  // One address plays every client: the per-address limit is raised.
  await using nginx = await startNginx(blue.port, {
    perClientLimit: CLIENTS + 100,
  });
  await using standby = await backgroundServer({
    COLOR: "blue",
    PORT: String(blue.port),
    ...settings,
  });
  for (const port of [blue.port, green.port]) {
    await until(
      async () => (await status(port, "/readyz"))?.status === 200,
      `port ${port} ready`,
    );
  }

  const loadtest = new Deno.Command("sh", {
    args: [
      "-c",
      `ulimit -n ${fds.maxFds} && exec "$@"`,
      "sh",
      DENO,
      "run",
      "-A",
      `${ROOT}main.ts`,
      "loadtest",
      "--url",
      `ws://127.0.0.1:${nginx.port}/ws/chat/`,
      "-c",
      String(CLIENTS),
      "--rate",
      String(RATE),
      "--duration",
      "300",
      "--timeout",
      "300",
      "--reconnect",
      "--reconnect-backoff",
      "100",
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const report = loadtest.output();
  try {
    // Every client connected through the proxy, streaming to blue.
    await until(
      async () =>
        (await status(blue.port, "/readyz"))?.body.active_connections ===
          CLIENTS,
      `${CLIENTS} clients on blue`,
      { timeoutMs: WAIT_MS },
    );

    const promote = await new Deno.Command(DENO, {
      args: [
        "run",
        "-A",
        `${ROOT}main.ts`,
        "promote",
        "green",
        "--upstream-file",
        nginx.upstreamFile,
        "--blue-upstream",
        `127.0.0.1:${blue.port}`,
        "--green-upstream",
        `127.0.0.1:${green.port}`,
        "--blue-url",
        `http://127.0.0.1:${blue.port}`,
        "--green-url",
        `http://127.0.0.1:${green.port}`,
        "--proxy-url",
        `http://127.0.0.1:${nginx.port}`,
        "--reload-cmd",
        nginx.reloadCommand,
        "--drain-cmd",
        `kill -TERM ${blue.child.pid}`,
        "--start-cmd",
        standby.command,
        "--timeout",
        String(WAIT_MS / 1000),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const promoteOut = decoder.decode(promote.stdout);
    console.log(promoteOut);
    assert.equal(promote.code, 0, promoteOut + decoder.decode(promote.stderr));

    // Blue drained every client and exited cleanly, none forced.
    assert.equal((await within(blue.status, "blue exits")).code, 0);
    const drain = await blue.waitForLine(
      (l) => l.message === "Drain complete",
      "the drain line",
    );
    assert.equal(drain.closed, CLIENTS);
    assert.equal(drain.forced, 0);
    const closedWith1001 = blue.lines.filter((l) =>
      l.includes('"message":"WebSocket disconnected"') &&
      l.includes('"close_code":1001')
    );
    assert.equal(closedWith1001.length, CLIENTS);

    // Every client is back, on green, and traffic flows there.
    const received = async () =>
      metricValue(
        await (await fetch(`http://127.0.0.1:${green.port}/metrics`)).text(),
        "websocket_messages_total",
        { type: "received" },
      );
    await until(
      async () =>
        (await status(green.port, "/readyz"))?.body.active_connections ===
          CLIENTS,
      `${CLIENTS} clients on green`,
      { timeoutMs: WAIT_MS },
    );
    const base = await received();
    await until(
      async () => await received() >= base + CLIENTS,
      "traffic on green",
      { timeoutMs: WAIT_MS },
    );
  } finally {
    loadtest.kill("SIGINT");
  }
  const out = await within(report, "the load test's report", WAIT_MS);
  assert.equal(out.code, 0, decoder.decode(out.stderr));
  const r = JSON.parse(decoder.decode(out.stdout));
  const rc = r.reconnect;
  console.log(
    `clients ${CLIENTS}, lost ${rc.lost}, repeated ${rc.repeated}, closes ${
      JSON.stringify(rc.closes)
    }, byes ${rc.byes} (${rc.resetsAfterBye} then 1006), resumed ${rc.clientsResumed}, failed attempts ${rc.failedAttempts}, gap ms p50 ${rc.gapMs.p50} p99 ${rc.gapMs.p99} max ${rc.gapMs.max}, replies ${r.messages.ok}/${r.messages.sent} (at the bye ${rc.uncounted} not counted, ${rc.unanswered} counted without a reply)`,
  );
  assert.deepEqual(r.errors, {});
  assert.equal(r.connections.opened, CLIENTS);
  assert.equal(rc.lost, 0);
  assert.equal(rc.repeated, 0);
  // Every frame was answered, or accounted for at a close by the bye total
  // or the resumed count: counted (its reply lost) or not counted at all
  // (sent as blue stopped counting).
  assert.equal(r.messages.sent, r.messages.ok + rc.uncounted + rc.unanswered);
  // Each client: one bye and one close from blue, one resume on green, and a
  // reply after it. Blue closed every socket with 1001; a client that was
  // sending as the close arrived sees 1006 after its bye instead (Deno's
  // client writes that frame after answering the close and is reset).
  assert.equal(rc.byes, CLIENTS);
  const { "1001": goingAway = 0, "1006": reset = 0, ...other } = rc.closes;
  assert.deepEqual(other, {});
  assert.equal(goingAway + reset, CLIENTS);
  assert.equal(rc.resetsAfterBye, reset);
  assert.equal(rc.resumes, CLIENTS);
  assert.equal(rc.clientsResumed, CLIENTS);
  assert.equal(rc.gaps, CLIENTS);
  const greenMetrics = await (await fetch(
    `http://127.0.0.1:${green.port}/metrics`,
  )).text();
  // The clients' resumes, and promote's smoke tests: the direct one, and
  // the one through the proxy unless its first socket went to an nginx
  // worker of the old configuration, which accepts for a moment after a
  // reload (that socket reached blue).
  const greenResumes = metricValue(
    greenMetrics,
    "websocket_session_resumes_total",
  );
  assert.ok(
    greenResumes === CLIENTS + 2 || greenResumes === CLIENTS + 1,
    `${greenResumes} resumes on green`,
  );

  // Blue is back on its address: a new process, ready, the standby.
  const standbyPid = await standby.pid();
  assert.ok(standbyPid !== undefined && standbyPid !== blue.child.pid);
  const ready = await status(blue.port, "/readyz");
  assert.equal(ready?.status, 200);
  assert.equal(ready?.body.color, "blue");
  assert.equal(ready?.body.active_connections, 0);
});
