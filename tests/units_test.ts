/**
 * The pure pieces on their own: UTF-8 length, the per-socket token bucket,
 * the close-code label and loadtest's percentiles. (The refusal table has
 * refusals_test.ts, monitor's histogram quantile monitor_test.ts.)
 */
import assert from "node:assert/strict";
import { RateLimiter, utf8Length } from "../src/sessions/frame_limits.ts";
import { closeCodeLabel } from "../src/sessions/refusals.ts";
import { percentiles } from "../src/cli/loadtest.ts";

const encoder = new TextEncoder();

Deno.test("utf8Length agrees with TextEncoder at every width boundary", () => {
  const cases = [
    "",
    "hello",
    "\u007f", // last 1-byte
    "\u0080", // first 2-byte
    "\u07ff", // last 2-byte
    "\u0800", // first 3-byte
    "\ud7ff", // last before the surrogates
    "\ue000", // first after them
    "\uffff", // last 3-byte
    "\u{10000}", // first 4-byte: a surrogate pair
    "\u{10ffff}", // last code point
    "h\u00e9llo \u20ac \u{1f600}!", // mixed
  ];
  for (const s of cases) {
    assert.equal(utf8Length(s), encoder.encode(s).length, JSON.stringify(s));
  }
});

Deno.test("utf8Length agrees with TextEncoder on random valid strings", () => {
  // A fixed linear congruential generator: the same strings every run.
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const ranges = [0x80, 0x800, 0xd800, 0x110000];
  for (let n = 0; n < 500; n++) {
    let s = "";
    const length = Math.floor(next() * 40);
    for (let i = 0; i < length; i++) {
      let cp = Math.floor(next() * ranges[Math.floor(next() * 4)]!);
      if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x20; // surrogates are not code points
      s += String.fromCodePoint(cp);
    }
    assert.equal(utf8Length(s), encoder.encode(s).length, JSON.stringify(s));
  }
});

Deno.test("RateLimiter allows one second's burst, then the refill rate", () => {
  const limiter = new RateLimiter(10, 0);
  for (let i = 0; i < 10; i++) assert.ok(limiter.take(0), `frame ${i + 1}`);
  assert.equal(limiter.take(0), false, "the 11th frame at once");
  assert.equal(limiter.take(50), false, "half a token after 50 ms");
  assert.ok(limiter.take(100), "a token after 100 ms");
  assert.equal(limiter.take(100), false, "and only one");
});

Deno.test("RateLimiter holds at most one second's worth after idling", () => {
  const limiter = new RateLimiter(5, 0);
  let allowed = 0;
  while (limiter.take(60_000)) allowed++;
  assert.equal(allowed, 5);
});

Deno.test("RateLimiter below one frame per second still allows one frame", () => {
  const limiter = new RateLimiter(0.5, 0);
  assert.ok(limiter.take(0));
  assert.equal(limiter.take(1000), false, "half a token after 1 s");
  assert.ok(limiter.take(2000), "one token after 2 s");
});

Deno.test("closeCodeLabel keeps registered and own codes, bounds the rest", () => {
  assert.equal(closeCodeLabel(1000), "1000");
  assert.equal(closeCodeLabel(1006), "1006");
  assert.equal(closeCodeLabel(1015), "1015");
  assert.equal(closeCodeLabel(4001), "4001");
  assert.equal(closeCodeLabel(1004), "other"); // reserved, never sent
  assert.equal(closeCodeLabel(1016), "other");
  assert.equal(closeCodeLabel(3000), "other");
  assert.equal(closeCodeLabel(4999), "other");
});

Deno.test("percentiles are nearest-rank, whatever the order", () => {
  const samples = Array.from({ length: 100 }, (_, i) => ((i * 37) % 100) + 1);
  assert.deepEqual(percentiles(samples), {
    p50: 50,
    p90: 90,
    p99: 99,
    max: 100,
    mean: 50.5,
  });
  assert.deepEqual(percentiles(new Float64Array([7])), {
    p50: 7,
    p90: 7,
    p99: 7,
    max: 7,
    mean: 7,
  });
  // Rounded to microseconds (the unit is ms).
  assert.equal(percentiles([1.23456789]).p50, 1.235);
});

Deno.test("percentiles of no samples are NaN, not 0", () => {
  const empty = percentiles([]);
  for (const [name, value] of Object.entries(empty)) {
    assert.ok(Number.isNaN(value), `${name} is ${value}`);
  }
});
