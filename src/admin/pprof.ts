/**
 * V8 profiles → pprof (github.com/google/pprof `profile.proto`), gzipped as
 * `go tool pprof`, Grafana Pyroscope and speedscope read it. Encoding is
 * `pprof-format`'s (pure JavaScript); this module maps V8's call trees onto
 * pprof's samples, locations and functions.
 *
 * @module
 */
import {
  Function as PprofFunction,
  Location,
  Profile,
  Sample,
  StringTable,
  ValueType,
} from "pprof-format";
import type {
  CallFrame,
  CpuProfile,
  HeapProfile,
  HeapProfileNode,
  Taken,
} from "./profiler.ts";

/**
 * V8's pseudo-frames that are not code: the tree's root, and the time the
 * thread waited for work (not CPU time).
 */
const NOT_CPU = new Set(["(root)", "(idle)"]);

/** Functions and locations, one per distinct frame. */
class Frames {
  readonly strings = new StringTable();
  readonly functions: PprofFunction[] = [];
  readonly locations: Location[] = [];
  readonly #ids = new Map<string, number>();

  /** The location id of a frame (a function at its start line). */
  locationOf(frame: CallFrame): number {
    const name = frame.functionName || "(anonymous)";
    const line = frame.lineNumber + 1;
    const key = `${name}\0${frame.url}\0${line}\0${frame.columnNumber}`;
    let id = this.#ids.get(key);
    if (id === undefined) {
      id = this.locations.length + 1;
      this.#ids.set(key, id);
      this.functions.push(
        new PprofFunction({
          id,
          name: this.strings.dedup(name),
          systemName: this.strings.dedup(name),
          filename: this.strings.dedup(frame.url),
          startLine: Math.max(0, line),
        }),
      );
      this.locations.push(
        new Location({
          id,
          line: [{ functionId: id, line: Math.max(0, line) }],
        }),
      );
    }
    return id;
  }

  /** A `type/unit` pair as pprof's value type. */
  valueType(typeAndUnit: string): ValueType {
    const [type, unit] = typeAndUnit.split("/");
    return new ValueType({
      type: this.strings.dedup(type!),
      unit: this.strings.dedup(unit!),
    });
  }

  /**
   * The profile of these frames and samples: `types` as `type/unit`, the
   * period as `[type/unit, value]`; time and duration from `taken`.
   */
  profile(
    taken: Taken<unknown>,
    types: readonly string[],
    sample: Sample[],
    [periodType, period]: [string, number],
  ): Profile {
    return new Profile({
      sampleType: types.map((t) => this.valueType(t)),
      sample,
      location: this.locations,
      function: this.functions,
      stringTable: this.strings,
      timeNanos: BigInt(Math.round(taken.startedAt)) * 1_000_000n,
      durationNanos: Math.round((taken.endedAt - taken.startedAt) * 1e6),
      periodType: this.valueType(periodType),
      period,
    });
  }
}

/**
 * Converts a V8 CPU profile to pprof with two sample types, `samples/count`
 * and `cpu/nanoseconds` (period `cpu/nanoseconds`, the sampling interval),
 * as Go's CPU profiles have. Time the thread spent idle is left out, so
 * the profile is the JavaScript thread's CPU time (garbage collection and
 * the runtime's own work included, as `(garbage collector)` and
 * `(program)`).
 *
 * @param taken The profile, its wall-clock start and its interval (µs).
 * @returns The pprof profile, not yet encoded.
 */
export function cpuToPprof(taken: Taken<CpuProfile>): Profile {
  const { profile, interval } = taken;
  const frames = new Frames();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  // Each sample lasts until the next one (as DevTools reads timeDeltas);
  // the last one, one interval.
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  const counts = new Map<number, { n: number; us: number }>();
  for (let i = 0; i < samples.length; i++) {
    const id = samples[i]!;
    const us = Math.max(0, deltas[i + 1] ?? interval);
    const c = counts.get(id);
    if (c === undefined) counts.set(id, { n: 1, us });
    else c.n++, c.us += us;
  }
  const sample: Sample[] = [];
  for (const [id, { n, us }] of counts) {
    const node = byId.get(id);
    if (node === undefined || NOT_CPU.has(node.callFrame.functionName)) {
      continue;
    }
    const stack: number[] = [];
    for (
      let at: number | undefined = id;
      at !== undefined;
      at = parent.get(at)
    ) {
      const frame = byId.get(at)!.callFrame;
      if (frame.functionName === "(root)") break;
      stack.push(frames.locationOf(frame));
    }
    sample.push(
      new Sample({ locationId: stack, value: [n, Math.round(us * 1000)] }),
    );
  }
  const types = ["samples/count", "cpu/nanoseconds"];
  return frames.profile(taken, types, sample, [
    "cpu/nanoseconds",
    interval * 1000,
  ]);
}

/**
 * Converts V8's sampling heap profile to pprof with two sample types,
 * `inuse_objects/count` and `inuse_space/bytes` (Go's names for live
 * memory), period `space/bytes` (the sampling interval). Object counts are
 * scaled as V8 scales sizes: a sample of `s` bytes stands for
 * `1 / (1 − e^(−s/interval))` objects.
 *
 * @param taken The profile, its wall-clock start and its interval (bytes).
 * @returns The pprof profile, not yet encoded.
 */
export function heapToPprof(taken: Taken<HeapProfile>): Profile {
  const { profile, interval } = taken;
  const frames = new Frames();
  const objects = new Map<number, number>();
  for (const s of profile.samples) {
    const scaled = 1 / (1 - Math.exp(-s.size / interval));
    objects.set(s.nodeId, (objects.get(s.nodeId) ?? 0) + scaled);
  }
  const sample: Sample[] = [];
  const visit = (node: HeapProfileNode, stack: readonly number[]) => {
    const here = node.callFrame.functionName === "(root)"
      ? stack
      : [frames.locationOf(node.callFrame), ...stack];
    if (node.selfSize > 0) {
      sample.push(
        new Sample({
          locationId: [...here],
          value: [Math.round(objects.get(node.id) ?? 0), node.selfSize],
        }),
      );
    }
    for (const child of node.children) visit(child, here);
  };
  visit(profile.head, []);
  const types = ["inuse_objects/count", "inuse_space/bytes"];
  return frames.profile(taken, types, sample, ["space/bytes", interval]);
}

/**
 * Encodes a profile and gzips it, as pprof files are stored.
 *
 * @param profile From {@link cpuToPprof} or {@link heapToPprof}.
 * @returns The gzipped protobuf.
 */
export async function encodeGzipped(profile: Profile): Promise<Uint8Array> {
  const raw = await profile.encodeAsync();
  const stream = new Blob([raw as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
