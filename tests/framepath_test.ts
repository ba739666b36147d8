/**
 * The frame path under hostile clients: a client that never reads, frames
 * far over the limit, frames that break RFC 6455. Each against a sockeye
 * subprocess, whose resident memory is read from /proc.
 */
import assert from "node:assert/strict";
import {
  metricValue,
  rawUpgrade,
  type ServerProcess,
  spawnServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

const MiB = 1024 * 1024;

/** Resident memory of a process in MiB (VmRSS). */
function rssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(status.match(/^VmRSS:\s+(\d+) kB/m)![1]) / 1024;
}

/** Samples a process's RSS every 50 ms; `stop()` returns the peak in MiB. */
function peakRss(pid: number): Disposable & { stop(): number } {
  let peak = rssMiB(pid);
  const timer = setInterval(() => peak = Math.max(peak, rssMiB(pid)), 50);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, rssMiB(pid));
    },
    [Symbol.dispose]() {
      clearInterval(timer);
    },
  };
}

async function scrape(proc: ServerProcess): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${proc.port}/metrics`);
  return await res.text();
}

/** Warms the server's frame path so later RSS reads compare like with like. */
async function warmUp(proc: ServerProcess): Promise<void> {
  await using client = await TestClient.open(
    `ws://127.0.0.1:${proc.port}/ws/chat/`,
  );
  for (let i = 1; i <= 200; i++) {
    assert.equal(await client.ask("warm"), `{"count": ${i}}`);
  }
}

/**
 * Reads a raw connection to its end, skipping frames of any size.
 *
 * @returns The close code if a close frame arrived, and how the TCP
 *   connection ended: `eof`, `reset`, or `open` (still open after the close
 *   frame, when `untilClose`).
 */
async function readToEnd(
  conn: Deno.Conn,
  untilClose = false,
): Promise<{ code: number | undefined; end: "eof" | "reset" | "open" }> {
  const chunk = new Uint8Array(1 << 20);
  let pending = new Uint8Array(0);
  let code: number | undefined;
  while (true) {
    let n: number | null;
    try {
      n = await conn.read(chunk);
    } catch (error) {
      if (error instanceof Deno.errors.ConnectionReset) {
        return { code, end: "reset" };
      }
      throw error;
    }
    if (n === null) return { code, end: "eof" };
    const data = new Uint8Array(pending.length + n);
    data.set(pending);
    data.set(chunk.subarray(0, n), pending.length);
    let off = 0;
    while (data.length - off >= 2 && code === undefined) {
      let len = data[off + 1]! & 0x7f;
      let head = 2;
      if (len === 126) {
        if (data.length - off < 4) break;
        len = (data[off + 2]! << 8) | data[off + 3]!;
        head = 4;
      }
      if (data.length - off < head + len) break;
      if ((data[off]! & 0x0f) === 0x8) {
        code = (data[off + head]! << 8) | data[off + head + 1]!;
      }
      off += head + len;
    }
    pending = data.slice(off);
    if (code !== undefined && untilClose) return { code, end: "open" };
  }
}

Deno.test("a client that sends and never reads is closed as slow_consumer while its cost is small", async () => {
  await using proc = await spawnServer();
  await warmUp(proc);
  const before = rssMiB(proc.child.pid);
  using rss = peakRss(proc.child.pid);
  using hog = await rawUpgrade(proc.port, "/ws/chat/");
  // "x" frames, masked, 1,000 to a write, as fast as the server takes them.
  const frame = [0x81, 0x81, 1, 2, 3, 4, "x".charCodeAt(0) ^ 1];
  const batch = new Uint8Array(
    Array.from({ length: 1000 }, () => frame).flat(),
  );
  const writer = (async () => {
    try {
      while (true) await hog.conn.write(batch);
    } catch { /* closed by the server, or by us below */ }
  })();

  const line = await within(
    proc.waitForLine((l) => l.error_type === "slow_consumer", "slow_consumer"),
    "the slow consumer's close",
    15_000,
  );
  assert.equal(line.level, "warning");
  assert.equal(line.close_code, 1008);
  // The server keeps serving others meanwhile.
  {
    await using other = await TestClient.open(
      `ws://127.0.0.1:${proc.port}/ws/chat/`,
    );
    assert.equal(await other.ask("still there?"), '{"count": 1}');
  }
  const peak = rss.stop();
  hog.conn.close();
  await writer;
  await proc.waitForLine(
    (l) => l.message === "WebSocket disconnected" && l.close_code === 1008,
    "the slow consumer's disconnect",
  );
  const after = rssMiB(proc.child.pid);
  const text = await scrape(proc);
  assert.equal(
    metricValue(text, "websocket_errors_total", {
      error_type: "slow_consumer",
    }),
    1,
  );
  assert.equal(
    metricValue(text, "websocket_disconnects_total", { code: "1008" }),
    1,
  );
  // MAX_BUFFERED_BYTES 64 KiB bounds the queue to about 5.5 MiB; the rest is
  // the runtime's read buffers and the garbage of ~10^5 frames.
  assert.ok(peak - before < 50, `RSS ${before} → peak ${peak} MiB`);
  assert.ok(after - before < 50, `RSS ${before} → ${after} MiB after close`);
});

Deno.test("frames far over MAX_MESSAGE_BYTES get 1009 and nothing keeps them", async () => {
  await using proc = await spawnServer({ MAX_MESSAGE_BYTES: "1024" });
  await warmUp(proc);
  const before = rssMiB(proc.child.pid);
  using rss = peakRss(proc.child.pid);
  const size = 4 * MiB;
  const payload = new Uint8Array(size).fill("a".charCodeAt(0));
  const afterRound: number[] = [];
  // Twelve rounds of ten at once, 480 MiB in all: were any frame kept,
  // memory would grow by at least that much.
  for (let round = 0; round < 12; round++) {
    const codes = await Promise.all(Array.from({ length: 10 }, async () => {
      using up = await rawUpgrade(proc.port, "/ws/chat/");
      await up.sendFrame(0x81, payload);
      return (await readToEnd(up.conn, true)).code;
    }));
    assert.deepEqual(codes, Array(10).fill(1009));
    afterRound.push(Math.round(rssMiB(proc.child.pid)));
  }
  const peak = rss.stop();
  const text = await scrape(proc);
  assert.equal(
    metricValue(text, "websocket_errors_total", {
      error_type: "message_too_big",
    }),
    120,
  );
  const figures = `RSS ${before} → peak ${peak} → after rounds ${afterRound}`;
  // The runtime reads each frame whole, copies it and hands JavaScript a
  // string (about 3 × 4 MiB each, 10 at once); after the close the string is
  // garbage that V8 frees at its next major collection, not at once.
  assert.ok(peak - before < 450, figures);
  assert.ok(afterRound.at(-1)! - before < 320, figures);
});

/** One frame that breaks RFC 6455, and the runtime's word for it. */
interface Violation {
  what: string;
  head: number;
  payload: number[];
  reason: string;
}

const VIOLATIONS: Violation[] = [
  {
    what: "invalid UTF-8 in a text frame",
    head: 0x81,
    payload: [0xff, 0xfe, 0x41],
    reason: "Invalid UTF-8",
  },
  {
    what: "RSV1 set without an extension",
    head: 0xc1,
    payload: [0x68, 0x69],
    reason: "Reserved bits are not zero",
  },
  {
    what: "reserved opcode 0x3",
    head: 0x83,
    payload: [0x68, 0x69],
    reason: "Invalid value",
  },
  {
    what: "reserved control opcode 0xB",
    head: 0x8b,
    payload: [],
    reason: "Invalid value",
  },
  {
    what: "ping of 126 bytes",
    head: 0x89,
    payload: Array(126).fill(0),
    reason: "Ping frame too large",
  },
  {
    what: "fragmented ping",
    head: 0x09,
    payload: [],
    reason: "Control frame must not be fragmented",
  },
  {
    what: "continuation without a start",
    head: 0x80,
    payload: [0x68, 0x69],
    reason: "Invalid continuation frame",
  },
  {
    what: "close frame with a 1-byte payload",
    head: 0x88,
    payload: [0x03],
    reason: "Invalid close frame",
  },
  {
    what: "close code 999",
    head: 0x88,
    payload: [0x03, 0xe7],
    reason: "Invalid close code",
  },
];

Deno.test("frames that break RFC 6455 are counted as protocol_error and logged once", async () => {
  await using proc = await spawnServer();
  const seen = await Promise.all(VIOLATIONS.map(async (v) => {
    using up = await rawUpgrade(proc.port, "/ws/chat/");
    assert.equal(up.status, 101);
    await up.sendFrame(v.head, new Uint8Array(v.payload));
    return await within(readToEnd(up.conn), v.what);
  }));
  // What the client sees: the TCP connection ends without a close frame,
  // except that the runtime answers an invalid close code with 1002.
  VIOLATIONS.forEach((v, i) => {
    const expected = v.reason === "Invalid close code" ? 1002 : undefined;
    assert.equal(seen[i]!.code, expected, v.what);
    assert.notEqual(seen[i]!.end, "open", v.what);
  });
  const warnings = await within(
    (async () => {
      while (true) {
        const lines = proc.lines.map((l) => JSON.parse(l)).filter((l) =>
          l.error_type === "protocol_error"
        );
        if (lines.length >= VIOLATIONS.length) return lines;
        await proc.waitForLine(
          (l) => l.error_type === "protocol_error",
          "a protocol_error line",
        );
      }
    })(),
    "a line per violation",
  );
  assert.equal(warnings.length, VIOLATIONS.length);
  assert.deepEqual(
    warnings.map((l) => l.reason).sort(),
    VIOLATIONS.map((v) => v.reason).sort(),
  );
  for (const line of warnings) {
    assert.equal(line.level, "warning");
    assert.equal(
      line.message,
      `WebSocket dropped by the runtime: ${line.reason}`,
    );
    assert.equal(
      line.close_code,
      line.reason === "Invalid close code" ? 1002 : 1006,
    );
  }
  const text = await scrape(proc);
  assert.equal(
    metricValue(text, "websocket_errors_total", {
      error_type: "protocol_error",
    }),
    VIOLATIONS.length,
  );
  assert.equal(
    metricValue(text, "websocket_disconnects_total", { code: "1002" }),
    1,
  );
});

Deno.test("a frame of 64 MiB or more is refused from its header and counted as message_too_big", async () => {
  await using proc = await spawnServer();
  const before = rssMiB(proc.child.pid);
  using up = await rawUpgrade(proc.port, "/ws/chat/");
  // Only the header: 14 bytes announcing a 64 MiB text frame.
  const head = new Uint8Array(14);
  head[0] = 0x81;
  head[1] = 0x80 | 127;
  new DataView(head.buffer).setBigUint64(2, BigInt(64 * MiB));
  await up.conn.write(head);
  const seen = await within(readToEnd(up.conn), "the end of the connection");
  assert.equal(seen.code, undefined);
  const line = await proc.waitForLine(
    (l) => l.error_type === "message_too_big",
    "the message_too_big line",
  );
  assert.equal(line.reason, "Frame too large");
  assert.equal(line.close_code, 1006);
  assert.ok(rssMiB(proc.child.pid) - before < 20, "nothing was buffered");
});

Deno.test("a client that simply goes away is not a protocol error", async () => {
  await using proc = await spawnServer();
  const connected = (n: number) =>
    proc.waitForLine(
      () =>
        proc.lines.filter((l) => l.includes("WebSocket connected")).length >= n,
      `${n} connections`,
    );
  {
    using up = await rawUpgrade(proc.port, "/ws/chat/");
    assert.equal(up.status, 101);
    await connected(1);
  } // a TCP FIN without a close frame
  {
    using up = await rawUpgrade(proc.port, "/ws/chat/");
    await up.sendText("hi");
    await until(
      async () =>
        metricValue(await scrape(proc), "websocket_messages_total", {
          type: "sent",
        }) === 1,
      "the reply",
    );
  } // closed with the reply unread: the client's kernel sends a reset
  await proc.waitForLine(
    () =>
      proc.lines.filter((l) => l.includes("WebSocket disconnected")).length ===
        2,
    "both disconnects",
  );
  const disconnects = proc.lines.map((l) => JSON.parse(l)).filter((l) =>
    l.message === "WebSocket disconnected"
  );
  assert.deepEqual(disconnects.map((l) => l.close_code), [1006, 1006]);
  assert.ok(!proc.lines.some((l) => l.includes('"level":"warning"')));
  const text = await scrape(proc);
  assert.equal(
    metricValue(text, "websocket_errors_total", {
      error_type: "protocol_error",
    }),
    0,
  );
  assert.equal(
    metricValue(text, "websocket_disconnects_total", { code: "1006" }),
    2,
  );
});
