/**
 * `sockeye promote` (and monitoring/nginx/promote.sh around it) against
 * Debian's nginx running the shipped config, blue and green as local
 * processes: the steps, the smoke tests that refuse a wrong green, the
 * rollback after a failed check through the proxy, and what the compose
 * stack relies on (no kill in the drain, a grace period above the drain).
 */
import assert from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import {
  backgroundServer,
  DENO,
  ROOT,
  spawnServer,
  startNginx,
  startRedis,
  startTestServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

const decoder = new TextDecoder();

async function promote(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("sh", {
    args: [`${ROOT}monitoring/nginx/promote.sh`, ...args],
    env: { SOCKEYE: `${DENO} run -A ${ROOT}main.ts`, ...env },
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/** The color the proxy serves, or undefined while it answers an error. */
async function colorBehind(port: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    if (res.ok) return (await res.json()).color;
    await res.body?.cancel();
    return undefined;
  } catch {
    return undefined;
  }
}

async function readyz(port: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`);
  await res.body?.cancel();
  return res.status;
}

Deno.test("promote checks green, switches the proxy, drains blue and brings it back as the standby", async () => {
  await using redis = await startRedis();
  const settings = { REDIS_URL: redis.url, DRAIN_DELAY_S: "0.2" };
  await using blue = await spawnServer({ COLOR: "blue", ...settings });
  await using green = await spawnServer({ COLOR: "green", ...settings });
  await using nginx = await startNginx(blue.port);
  await using standby = await backgroundServer({
    COLOR: "blue",
    PORT: String(blue.port),
    ...settings,
  });
  await until(async () => await colorBehind(nginx.port) === "blue", "blue");

  const url = `ws://127.0.0.1:${nginx.port}/ws/chat/?session_uuid=promoted`;
  const client = await TestClient.open(url, "sockeye.v1");
  assert.match(await client.next(), /"count": 0, "resumed": false/);
  assert.equal(await client.ask("a"), '{"count": 1}');
  assert.equal(await client.ask("b"), '{"count": 2}');

  const run = await promote(["green"], {
    UPSTREAM_FILE: nginx.upstreamFile,
    BLUE_ADDR: `127.0.0.1:${blue.port}`,
    GREEN_ADDR: `127.0.0.1:${green.port}`,
    BLUE_URL: `http://127.0.0.1:${blue.port}`,
    GREEN_URL: `http://127.0.0.1:${green.port}`,
    PROXY_URL: `http://127.0.0.1:${nginx.port}`,
    RELOAD_CMD: nginx.reloadCommand,
    DRAIN_CMD: `kill -TERM ${blue.child.pid}`,
    START_CMD: standby.command,
    PROMOTE_TIMEOUT_S: "20",
  });
  assert.equal(run.code, 0, run.stdout + run.stderr);
  // Six steps, in order, each with its duration.
  const steps = run.stdout.split("\n").filter((l) => /^\d\/6 /.test(l));
  assert.deepEqual(
    steps.map((l) => l.match(/^(\d)\/6 (.+?) +\d+\.\d{3} s {2}/)?.[2]),
    [
      "green ready",
      "smoke test green",
      "proxy → green",
      "smoke test via the proxy",
      "drain blue",
      "blue back as standby",
    ],
    run.stdout,
  );
  assert.match(
    run.stdout,
    /^promoted green in \d+\.\d{3} s; blue is the ready standby$/m,
  );
  assert.match(
    await Deno.readTextFile(nginx.upstreamFile),
    new RegExp(`^  server 127\\.0\\.0\\.1:${green.port};$`, "m"),
  );

  // Blue drained: the client got its bye through the proxy, then 1001, and
  // blue exited cleanly.
  assert.equal((await client.closed).code, 1001);
  assert.equal(client.received.at(-1), '{"bye": true, "total": 2}');
  assert.equal((await within(blue.status, "blue exits")).code, 0);

  // It reconnects through the proxy, lands on green and continues.
  await using again = await TestClient.open(url, "sockeye.v1");
  assert.match(await again.next(), /"count": 2, "resumed": true/);
  assert.equal(await again.ask("c"), '{"count": 3}');
  assert.equal(await colorBehind(nginx.port), "green");

  // A new blue process answers on blue's address: the ready standby.
  assert.ok(await standby.pid(), "the start command ran");
  assert.equal(await readyz(blue.port), 200);
  const res = await fetch(`http://127.0.0.1:${blue.port}/healthz`);
  assert.equal((await res.json()).color, "blue");

  // Rolling back is the same command the other way.
  await using green2 = await backgroundServer({
    COLOR: "green",
    PORT: String(green.port),
    ...settings,
  });
  const back = await promote(["blue", "--timeout", "20"], {
    UPSTREAM_FILE: nginx.upstreamFile,
    BLUE_ADDR: `127.0.0.1:${blue.port}`,
    GREEN_ADDR: `127.0.0.1:${green.port}`,
    BLUE_URL: `http://127.0.0.1:${blue.port}`,
    GREEN_URL: `http://127.0.0.1:${green.port}`,
    PROXY_URL: `http://127.0.0.1:${nginx.port}`,
    RELOAD_CMD: nginx.reloadCommand,
    DRAIN_CMD: `kill -TERM ${green.child.pid}`,
    START_CMD: green2.command,
  });
  assert.equal(back.code, 0, back.stdout + back.stderr);
  assert.equal(await colorBehind(nginx.port), "blue");
  assert.equal((await again.closed).code, 1001);
  assert.equal((await within(green.status, "green exits")).code, 0);
  assert.equal(await readyz(green.port), 200);
});

/**
 * A green that is not sockeye enough: its readiness and its reply bytes are
 * the test's to choose.
 */
function fakeGreen(
  answer: { ready: boolean; reply: string; session?: string },
) {
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/readyz") {
        return Response.json(
          answer.ready
            ? { status: "ready", color: "green", active_connections: 0 }
            : { status: "starting", color: "green" },
          { status: answer.ready ? 200 : 503 },
        );
      }
      if (path === "/healthz") {
        return Response.json({ status: "healthy", color: "green" });
      }
      const resume = req.headers.get("sec-websocket-protocol") !== null;
      const { socket, response } = Deno.upgradeWebSocket(
        req,
        resume ? { protocol: "sockeye.v1" } : {},
      );
      socket.onopen = () => {
        if (resume && answer.session) socket.send(answer.session);
      };
      socket.onmessage = () => socket.send(answer.reply);
      return response;
    },
  );
  return {
    port: server.addr.port,
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
    },
  };
}

Deno.test("promote refuses a green that is not ready or answers wrong bytes: proxy and blue untouched", async () => {
  await using blue = await startTestServer({ COLOR: "blue" });
  await using nginx = await startNginx(blue.port);
  const answer: { ready: boolean; reply: string; session?: string } = {
    ready: false,
    reply: '{"count":1}',
  };
  await using green = fakeGreen(answer);
  const dir = await Deno.makeTempDir({ prefix: "sockeye-promote-" });
  const before = await Deno.readTextFile(nginx.upstreamFile);
  const attempt = () =>
    promote([
      "green",
      "--upstream-file",
      nginx.upstreamFile,
      "--green-upstream",
      `127.0.0.1:${green.port}`,
      "--green-url",
      `http://127.0.0.1:${green.port}`,
      "--blue-url",
      `http://127.0.0.1:${blue.port}`,
      "--proxy-url",
      `http://127.0.0.1:${nginx.port}`,
      "--reload-cmd",
      `touch ${dir}/reloaded`,
      "--drain-cmd",
      `touch ${dir}/drained-{color}`,
      "--start-cmd",
      `touch ${dir}/started-{color}`,
    ]);
  const untouched = async () => {
    assert.equal(await Deno.readTextFile(nginx.upstreamFile), before);
    assert.deepEqual([...Deno.readDirSync(dir)], [], "no command ran");
    assert.equal(await colorBehind(nginx.port), "blue");
    assert.equal(await readyz(blue.port), 200);
    await using client = await TestClient.open(
      `ws://127.0.0.1:${nginx.port}/ws/chat/`,
    );
    assert.equal(await client.ask("still blue"), '{"count": 1}');
  };
  try {
    const notReady = await attempt();
    assert.equal(notReady.code, 1);
    assert.match(
      notReady.stdout,
      /^1\/6 green ready +\d+\.\d{3} s {2}FAILED: .*\/readyz answered 503 .*"starting"/m,
    );
    assert.match(
      notReady.stdout,
      /nothing changed: the proxy still sends clients to blue/,
    );
    assert.match(notReady.stderr, /^sockeye promote: green ready: /m);
    await untouched();

    answer.ready = true;
    const wrongBytes = await attempt();
    assert.equal(wrongBytes.code, 1);
    assert.match(
      wrongBytes.stdout,
      /^2\/6 smoke test green +\d+\.\d{3} s {2}FAILED: expected \{"count": 1\}, got \{"count":1\}$/m,
    );
    await untouched();

    // Right count, but the resume is not a resume.
    answer.reply = '{"count": 1}';
    answer.session =
      '{"type": "session", "session_uuid": "x", "count": 0, "resumed": false}';
    const noResume = await attempt();
    assert.equal(noResume.code, 1);
    assert.match(
      noResume.stdout,
      /^2\/6 smoke test green .*FAILED: expected \{"type": "session", "session_uuid": "promote-smoke-[0-9a-f-]{36}", "count": 1, "resumed": true\}, got \{"type": "session", "session_uuid": "x", "count": 0, "resumed": false\}$/m,
    );
    await untouched();

    // Promoting the live color changes nothing and succeeds.
    const live = await promote([
      "blue",
      "--upstream-file",
      nginx.upstreamFile,
      "--blue-upstream",
      `127.0.0.1:${blue.port}`,
      "--drain-cmd",
      `touch ${dir}/drained-{color}`,
    ]);
    assert.equal(live.code, 0, live.stderr);
    assert.match(
      live.stdout,
      /^blue is already live \(.* names 127\.0\.0\.1:\d+\): nothing to do$/m,
    );
    await untouched();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("promote undoes the switch when the check through the proxy fails", async () => {
  await using blue = await startTestServer({ COLOR: "blue" });
  await using green = await startTestServer({ COLOR: "green" });
  await using nginx = await startNginx(blue.port);
  const dir = await Deno.makeTempDir({ prefix: "sockeye-promote-" });
  const before = await Deno.readTextFile(nginx.upstreamFile);
  try {
    // The reload command does not reach this nginx: it keeps serving blue.
    const run = await promote([
      "green",
      "--upstream-file",
      nginx.upstreamFile,
      "--green-upstream",
      `127.0.0.1:${green.port}`,
      "--green-url",
      green.http(""),
      "--blue-url",
      blue.http(""),
      "--proxy-url",
      `http://127.0.0.1:${nginx.port}`,
      "--reload-cmd",
      `echo reload >> ${dir}/reloads`,
      "--drain-cmd",
      `touch ${dir}/drained`,
      "--start-cmd",
      `touch ${dir}/started`,
      "--timeout",
      "1",
    ]);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.match(run.stdout, /^3\/6 proxy → green +\d+\.\d{3} s {2}/m);
    assert.match(
      run.stdout,
      /^4\/6 smoke test via the proxy +\d+\.\d{3} s {2}FAILED: .*\/healthz did not report green within 1 s \(last: 200 "blue"\)$/m,
    );
    assert.match(
      run.stdout,
      /^rolled back: .* restored and the proxy reloaded; blue serves$/m,
    );
    // Switched, then switched back: two reloads, the file as it was, blue
    // never drained.
    assert.equal(await Deno.readTextFile(`${dir}/reloads`), "reload\nreload\n");
    assert.equal(await Deno.readTextFile(nginx.upstreamFile), before);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [
      "reloads",
    ]);
    assert.equal(await readyz(blue.port), 200);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Compose durations: `15s`, `1m30s`, `500ms`. */
function composeSeconds(text: string): number {
  const units: Record<string, number> = {
    h: 3600,
    m: 60,
    s: 1,
    ms: 0.001,
    us: 1e-6,
  };
  let total = 0;
  const rest = text.replace(/(\d+(?:\.\d+)?)(h|ms|m|s|us)/g, (_, n, u) => {
    total += Number(n) * units[u]!;
    return "";
  });
  assert.equal(rest, "", `duration "${text}"`);
  return total;
}

Deno.test("the compose promote drains with docker compose stop, never kill, inside the grace period", async () => {
  // What promote runs by default, from its own plan.
  const plan = await new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, "promote", "green", "--dry-run"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(plan.code, 0, decoder.decode(plan.stderr));
  const text = decoder.decode(plan.stdout);
  assert.match(text, /^5\/6 drain blue +run: docker compose stop app_blue;/m);
  assert.match(
    text,
    /^6\/6 blue back as standby +run: docker compose start app_blue;/m,
  );
  assert.doesNotMatch(text, /\bkill\b/);
  // The wrapper adds no command of its own.
  const script = await Deno.readTextFile(
    `${ROOT}monitoring/nginx/promote.sh`,
  );
  const code = script.split("\n").filter((l) => !/^\s*#/.test(l)).join("\n");
  assert.doesNotMatch(code, /\bkill\b/);
  assert.match(code, /promote "\$@"/);

  const compose = parseYaml(await Deno.readTextFile(`${ROOT}compose.yml`), {
    merge: true,
  }) as {
    services: Record<string, {
      stop_grace_period?: string;
      stop_signal?: string;
      restart?: string;
      ports?: string[];
      environment?: Record<string, string>;
    }>;
  };
  const help = decoder.decode(
    (await new Deno.Command(DENO, {
      args: ["run", "-A", `${ROOT}main.ts`, "promote", "--help"],
      stdout: "piped",
    }).output()).stdout,
  );
  for (const color of ["blue", "green"]) {
    const app = compose.services[`app_${color}`]!;
    const env = app.environment!;
    const grace = composeSeconds(app.stop_grace_period!);
    const drain = Number(env.SHUTDOWN_TIMEOUT_S) + Number(env.DRAIN_DELAY_S);
    assert.ok(
      grace > drain,
      `app_${color}: stop_grace_period ${grace} s above SHUTDOWN_TIMEOUT_S + DRAIN_DELAY_S = ${drain} s`,
    );
    assert.equal(app.stop_signal, "SIGTERM");
    assert.equal(app.restart, "unless-stopped");
    // promote reaches each color where compose publishes it.
    const published = app.ports?.find((p) => p.endsWith(":8000"));
    assert.ok(published, `app_${color} publishes port 8000`);
    const [host, port] = published.split(":");
    assert.equal(host, "127.0.0.1");
    assert.match(
      help,
      new RegExp(
        `--${color}-url URL .*\\(default http://127\\.0\\.0\\.1:${port}\\)`,
      ),
    );
  }
  assert.ok(compose.services.proxy!.ports!.includes("8080:80"));
  assert.match(
    help,
    /--proxy-url URL .*\(default http:\/\/127\.0\.0\.1:8080\)/,
  );
});
