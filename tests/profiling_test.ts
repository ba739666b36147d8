/**
 * Profiles of a real server under load: on-demand CPU and heap profiles as
 * gzipped pprof (decoded with `pprof-format`) and as V8 JSON, one at a
 * time; and continuous profiling pushed to a Pyroscope ingest receiver run
 * by the test (Grafana Pyroscope has no Debian package), which goes down
 * and comes back while the server keeps serving.
 */
import assert from "node:assert/strict";
import { Profile } from "pprof-format";
import {
  freePort,
  metricValue,
  type ServerProcess,
  spawnServer,
  TestClient,
  until,
  WAIT_MS,
} from "./_helpers.ts";
import { VERSION } from "../src/version.ts";

async function gunzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Sample types as `type/unit`, and every function's name and file. */
function describe(profile: Profile) {
  const s = profile.stringTable.strings;
  return {
    types: profile.sampleType.map((t) =>
      `${s[Number(t.type)]}/${s[Number(t.unit)]}`
    ),
    functions: profile.function.map((f) => ({
      name: s[Number(f.name)]!,
      file: s[Number(f.filename)]!,
    })),
  };
}

function adminBase(srv: ServerProcess): string {
  const ready = JSON.parse(srv.lines.find((l) => l.includes("admin_port"))!);
  return `http://127.0.0.1:${ready.admin_port}`;
}

/** Clients sending frames as fast as they are answered, until stopped. */
async function load(port: number, sockets = 20) {
  const clients = await Promise.all(
    Array.from(
      { length: sockets },
      (_, i) =>
        TestClient.open(
          `ws://127.0.0.1:${port}/ws/chat/?session_uuid=load-${i}`,
        ),
    ),
  );
  let running = true;
  let answered = 0;
  const loops = clients.map(async (c) => {
    while (running) {
      await c.ask("frame");
      answered++;
    }
  });
  return {
    get answered() {
      return answered;
    },
    async stop() {
      running = false;
      await Promise.all(loops);
      for (const c of clients) await c.close();
    },
  };
}

Deno.test("a CPU profile taken under load decodes as pprof, has samples and names functions from src/; a second one meanwhile gets 409", async () => {
  await using srv = await spawnServer({ ADMIN_PORT: "0" });
  const base = adminBase(srv);
  const traffic = await load(srv.port);
  try {
    // Two at once, each sampling for 2 s: whichever arrives second is refused.
    const started = performance.now();
    const both = await Promise.all(
      [0, 1].map(() => fetch(`${base}/debug/pprof/profile?seconds=2`)),
    );
    assert.deepEqual(both.map((r) => r.status).sort(), [200, 409]);
    const refused = both.find((r) => r.status === 409)!;
    assert.match((await refused.json()).message, /already being taken/);
    const res = both.find((r) => r.status === 200)!;
    assert.equal(res.headers.get("Content-Type"), "application/octet-stream");
    assert.match(
      res.headers.get("Content-Disposition")!,
      /filename="sockeye-cpu\.pb\.gz"/,
    );
    const gz = new Uint8Array(await res.arrayBuffer());
    assert.ok(performance.now() - started >= 2000, "it sampled 2 s");
    const profile = Profile.decode(await gunzip(gz));
    const { types, functions } = describe(profile);
    assert.deepEqual(types, ["samples/count", "cpu/nanoseconds"]);
    assert.equal(Number(profile.period), 1_000_000, "1 ms in ns");
    const samples = profile.sample.reduce((n, s) => n + Number(s.value[0]), 0);
    assert.ok(samples > 50, `${samples} samples`);
    const ours = functions.filter((f) => f.file.includes("/src/"));
    assert.ok(
      ours.some((f) => f.file.endsWith("/src/sessions/connection.ts")),
      `functions from src/: ${JSON.stringify(ours.slice(0, 20))}`,
    );
    // Every sample's stack points at known locations.
    const ids = new Set(profile.location.map((l) => Number(l.id)));
    for (const s of profile.sample) {
      for (const id of s.locationId) assert.ok(ids.has(Number(id)));
    }
    assert.ok(traffic.answered > 0);
  } finally {
    await traffic.stop();
  }
});

Deno.test("?format=cpuprofile returns V8's JSON; the heap profile decodes as pprof and as V8 JSON; bad parameters get 400", async () => {
  await using srv = await spawnServer({ ADMIN_PORT: "0" });
  const base = adminBase(srv);
  const traffic = await load(srv.port, 5);
  try {
    const res = await fetch(
      `${base}/debug/pprof/profile?seconds=1&format=cpuprofile`,
    );
    assert.equal(res.headers.get("Content-Type"), "application/json");
    const v8 = await res.json();
    assert.ok(Array.isArray(v8.nodes) && v8.nodes.length > 0);
    assert.equal(v8.nodes[0].callFrame.functionName, "(root)");
    assert.ok(v8.samples.length > 0);
    assert.equal(v8.samples.length, v8.timeDeltas.length);
    assert.ok(v8.endTime > v8.startTime);

    const heap = await fetch(`${base}/debug/pprof/heap?seconds=1`);
    assert.equal(heap.status, 200);
    const hp = Profile.decode(
      await gunzip(new Uint8Array(await heap.arrayBuffer())),
    );
    assert.deepEqual(describe(hp).types, [
      "inuse_objects/count",
      "inuse_space/bytes",
    ]);
    assert.equal(Number(hp.period), 32768);
    const heapJson = await (await fetch(
      `${base}/debug/pprof/heap?seconds=1&format=heapprofile`,
    )).json();
    assert.equal(heapJson.head.callFrame.functionName, "(root)");
    assert.ok(Array.isArray(heapJson.samples));

    for (
      const q of [
        "profile?seconds=0",
        "profile?seconds=61",
        "profile?seconds=1.5",
        "profile?format=svg",
        "heap?format=cpuprofile",
      ]
    ) {
      const bad = await fetch(`${base}/debug/pprof/${q}`);
      assert.equal(bad.status, 400, q);
      await bad.body?.cancel();
    }
  } finally {
    await traffic.stop();
  }
});

/** A stand-in for Pyroscope's `POST /ingest` on a fixed loopback port. */
function pyroscope(port: number) {
  const received: Array<{ query: URLSearchParams; profile: Profile }> = [];
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port, signal: ac.signal, onListen() {} },
    async (req) => {
      const url = new URL(req.url);
      if (req.method !== "POST" || url.pathname !== "/ingest") {
        return new Response("not found", { status: 404 });
      }
      const form = await req.formData();
      const file = form.get("profile");
      if (!(file instanceof File)) {
        return new Response("no profile", { status: 400 });
      }
      const bytes = new Uint8Array(await file.arrayBuffer());
      received.push({
        query: url.searchParams,
        profile: Profile.decode(await gunzip(bytes)),
      });
      return new Response(null, { status: 200 });
    },
  );
  return {
    received,
    async close() {
      ac.abort();
      await server.finished;
    },
  };
}

Deno.test("continuous profiling pushes labelled pprof to Pyroscope; while it is down the service serves and counts failures", async () => {
  const port = freePort();
  let receiver = pyroscope(port);
  await using srv = await spawnServer({
    ADMIN_PORT: "0",
    COLOR: "green",
    PYROSCOPE_URL: `http://127.0.0.1:${port}`,
    PROFILE_INTERVAL_S: "1",
  });
  const base = adminBase(srv);
  const metrics = async () => await (await fetch(`${base}/metrics`)).text();
  const traffic = await load(srv.port, 5);
  try {
    await until(() => receiver.received.length >= 2, "two pushes", {
      timeoutMs: WAIT_MS,
    });
    for (const { query, profile } of receiver.received) {
      assert.equal(
        query.get("name"),
        `sockeye{service_name=sockeye,color=green,version=${VERSION}}`,
      );
      assert.equal(query.get("format"), "pprof");
      const from = Number(query.get("from"));
      const until_ = Number(query.get("until"));
      assert.ok(from <= until_ && until_ - from <= 3, `${from}..${until_}`);
      assert.ok(Math.abs(until_ - Date.now() / 1000) < 60);
      const { types } = describe(profile);
      assert.deepEqual(types, ["samples/count", "cpu/nanoseconds"]);
      assert.equal(Number(profile.period), 10_000_000, "100 Hz");
    }
    // Under load, some piece names our own code.
    assert.ok(
      receiver.received.some(({ profile }) =>
        describe(profile).functions.some((f) => f.file.includes("/src/"))
      ),
    );
    assert.ok(
      metricValue(await metrics(), "app_profile_pushes_total", {
        result: "ok",
      }) >= 2,
    );

    // Pyroscope goes away: pushes fail, are counted, logged once; frames flow.
    await receiver.close();
    const before = traffic.answered;
    await until(
      async () =>
        metricValue(await metrics(), "app_profile_pushes_total", {
          result: "error",
        }) >= 2,
      "two failed pushes counted",
    );
    assert.ok(traffic.answered > before, "the service kept answering");
    const outage = srv.lines.filter((l) =>
      l.includes("Cannot push a CPU profile to Pyroscope")
    );
    assert.equal(outage.length, 1, "logged once per outage");
    assert.equal(JSON.parse(outage[0]!).level, "warning");

    // It comes back: pushes resume, and the recovery is logged.
    receiver = pyroscope(port);
    await until(() => receiver.received.length >= 1, "a push after recovery");
    const recovered = await srv.waitForLine(
      (l) =>
        /^Pyroscope push recovered after \d+ failures$/.test(String(l.message)),
      "the recovery line",
    );
    assert.ok((recovered.failures as number) >= 2);
  } finally {
    await traffic.stop();
    await receiver.close();
  }
});
