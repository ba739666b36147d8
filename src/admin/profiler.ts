/**
 * CPU and heap profiles of this process, taken in-process through
 * `node:inspector`'s `Session` (V8's sampling profilers; no `--inspect`
 * flag, no port opened).
 *
 * Nothing here runs until a profile is asked for: the frame path pays
 * nothing while nobody profiles. Each profile opens its own inspector
 * session, so an on-demand profile and the continuous one
 * ({@link CpuRecorder}, for Pyroscope) run side by side, each with its own
 * sampling interval.
 *
 * @module
 */
import { Session } from "node:inspector";

/** Where a V8 profile node's code is. Lines and columns are 0-based. */
export interface CallFrame {
  /** Function name; empty for anonymous functions. */
  readonly functionName: string;
  /** V8's script id. */
  readonly scriptId: string;
  /** Script URL, e.g. `file:///app/src/sessions/connection.ts`. */
  readonly url: string;
  /** 0-based line of the function; -1 when unknown. */
  readonly lineNumber: number;
  /** 0-based column of the function; -1 when unknown. */
  readonly columnNumber: number;
}

/** One node of a V8 CPU profile's call tree. */
export interface CpuProfileNode {
  /** Node id, referenced by `samples` and `children`. */
  readonly id: number;
  /** The function. */
  readonly callFrame: CallFrame;
  /** Samples whose innermost frame is this node. */
  readonly hitCount?: number;
  /** Ids of the callees' nodes. */
  readonly children?: readonly number[];
}

/**
 * A V8 CPU profile, as Chrome DevTools loads it (`.cpuprofile`, the
 * DevTools protocol's `Profiler.Profile`).
 */
export interface CpuProfile {
  /** The call tree; the first node is `(root)`. */
  readonly nodes: readonly CpuProfileNode[];
  /** Start, in µs on V8's monotonic clock. */
  readonly startTime: number;
  /** End, in µs on V8's monotonic clock. */
  readonly endTime: number;
  /** Node id of each sample, in time order. */
  readonly samples?: readonly number[];
  /** µs between consecutive samples (the first from `startTime`). */
  readonly timeDeltas?: readonly number[];
}

/** One node of V8's sampling heap profile. */
export interface HeapProfileNode {
  /** The function that allocated. */
  readonly callFrame: CallFrame;
  /** Bytes allocated here and still live, estimated from the samples. */
  readonly selfSize: number;
  /** Node id, referenced by the samples. */
  readonly id: number;
  /** Callees. */
  readonly children: readonly HeapProfileNode[];
}

/**
 * V8's sampling heap profile (`HeapProfiler.SamplingHeapProfile`,
 * `.heapprofile` in Chrome DevTools).
 */
export interface HeapProfile {
  /** The root of the allocation tree. */
  readonly head: HeapProfileNode;
  /** Each sampled allocation still live: its size and node. */
  readonly samples: readonly {
    readonly size: number;
    readonly nodeId: number;
    readonly ordinal: number;
  }[];
}

/** A profile with when it was taken. */
export interface Taken<P> {
  /** What V8 returned. */
  readonly profile: P;
  /** Wall-clock start, in ms since the Unix epoch. */
  readonly startedAt: number;
  /** Wall-clock end, in ms since the Unix epoch. */
  readonly endedAt: number;
  /** Sampling interval: µs for CPU profiles, bytes for heap profiles. */
  readonly interval: number;
}

/**
 * Sampling interval of on-demand CPU profiles, in µs: V8's default. A
 * profile asked for by a person covers seconds, so it wants detail (1,000
 * samples a second); the sampler thread costs less than this machine's
 * run-to-run noise at that rate (measured: 2,450 samples in 3 s, no
 * throughput change).
 */
export const CPU_INTERVAL_US = 1000;

/**
 * Sampling interval of the continuous CPU profile pushed to Pyroscope, in µs:
 * 100 Hz, the rate of Go's profiler and of Pyroscope's own agents. It runs
 * all the time, so it samples ten times less often than an on-demand
 * profile; Pyroscope adds the profiles up over time.
 */
export const CONTINUOUS_INTERVAL_US = 10_000;

/**
 * Bytes allocated between two samples of the heap profiler: V8's default.
 * Larger objects are always sampled; smaller ones with a probability that
 * V8 corrects for in the sizes it reports.
 */
export const HEAP_INTERVAL_BYTES = 32_768;

/** A profile of the same kind is already being taken (answered 409). */
export class ProfilerBusyError extends Error {
  /**
   * Creates the error.
   *
   * @param kind `CPU` or `heap`.
   */
  constructor(kind: string) {
    super(`A ${kind} profile is already being taken: try again when it ends`);
    this.name = "ProfilerBusyError";
  }
}

/** An inspector session connected to this process. */
class Inspector {
  readonly #session = new Session();

  constructor() {
    this.#session.connect();
  }

  post<T = void>(method: string, params: object = {}): Promise<T> {
    return new Promise((resolve, reject) =>
      this.#session.post(
        method,
        params,
        (error: Error | null, result: unknown) =>
          error ? reject(error) : resolve(result as T),
      )
    );
  }

  disconnect(): void {
    this.#session.disconnect();
  }
}

/**
 * Resolves after `ms`, or at once when `signal` aborts.
 *
 * @returns Whether the full time passed.
 */
function wait(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const done = (full: boolean) => {
      clearTimeout(timer);
      signal.removeEventListener("abort", aborted);
      resolve(full);
    };
    const aborted = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal.addEventListener("abort", aborted, { once: true });
  });
}

/**
 * Takes on-demand profiles, one of each kind at a time. {@link close}
 * (the drain) ends a profile in progress early, so it never holds the
 * process open.
 */
export class Profiler {
  readonly #busy = new Set<string>();
  readonly #closing = new AbortController();

  /**
   * Records a CPU profile of the whole process's JavaScript thread.
   *
   * @param seconds How long to sample.
   * @returns The profile, shorter than asked when the drain ended it.
   * @throws {ProfilerBusyError} While another CPU profile is being taken.
   */
  cpu = (seconds: number): Promise<Taken<CpuProfile>> =>
    this.#record("CPU", seconds, CPU_INTERVAL_US, async (inspector) => {
      await inspector.post("Profiler.enable");
      await inspector.post("Profiler.setSamplingInterval", {
        interval: CPU_INTERVAL_US,
      });
      await inspector.post("Profiler.start");
      return async () =>
        (await inspector.post<{ profile: CpuProfile }>("Profiler.stop"))
          .profile;
    });

  /**
   * Records which code allocates memory that stays live: V8's sampling heap
   * profiler runs for `seconds`, then reports the sampled objects allocated
   * meanwhile that are still reachable.
   *
   * @param seconds How long to sample.
   * @returns The profile, shorter than asked when the drain ended it.
   * @throws {ProfilerBusyError} While another heap profile is being taken.
   */
  heap = (seconds: number): Promise<Taken<HeapProfile>> =>
    this.#record("heap", seconds, HEAP_INTERVAL_BYTES, async (inspector) => {
      await inspector.post("HeapProfiler.enable");
      await inspector.post("HeapProfiler.startSampling", {
        samplingInterval: HEAP_INTERVAL_BYTES,
      });
      return async () => {
        const { profile } = await inspector.post<{ profile: HeapProfile }>(
          "HeapProfiler.getSamplingProfile",
        );
        await inspector.post("HeapProfiler.stopSampling");
        return profile;
      };
    });

  /** Ends profiles in progress now and later ones at once (the drain). */
  close(): void {
    this.#closing.abort();
  }

  /**
   * One profile of a kind at a time: start it in a new inspector session,
   * wait, stop it.
   */
  async #record<P>(
    kind: string,
    seconds: number,
    interval: number,
    start: (inspector: Inspector) => Promise<() => Promise<P>>,
  ): Promise<Taken<P>> {
    if (this.#busy.has(kind)) throw new ProfilerBusyError(kind);
    this.#busy.add(kind);
    const inspector = new Inspector();
    try {
      const startedAt = Date.now();
      const stop = await start(inspector);
      await wait(seconds * 1000, this.#closing.signal);
      const profile = await stop();
      return { profile, startedAt, endedAt: Date.now(), interval };
    } finally {
      inspector.disconnect();
      this.#busy.delete(kind);
    }
  }
}

/**
 * A CPU profile that runs until stopped and is cut into consecutive pieces
 * (continuous profiling). Its inspector session is its own, so on-demand
 * profiles are unaffected.
 */
export class CpuRecorder {
  readonly #intervalUs: number;
  #inspector: Inspector | undefined;
  #startedAt = 0;

  /**
   * Creates the recorder; nothing runs until {@link start}.
   *
   * @param intervalUs Sampling interval in µs.
   */
  constructor(intervalUs: number = CONTINUOUS_INTERVAL_US) {
    this.#intervalUs = intervalUs;
  }

  /**
   * Starts sampling.
   *
   * @returns Resolves once V8 samples.
   */
  async start(): Promise<void> {
    const inspector = this.#inspector = new Inspector();
    await inspector.post("Profiler.enable");
    await inspector.post("Profiler.setSamplingInterval", {
      interval: this.#intervalUs,
    });
    this.#startedAt = Date.now();
    await inspector.post("Profiler.start");
  }

  /**
   * Ends the current piece and starts the next at once.
   *
   * @returns The piece since the last cut (or the start).
   * @throws {Error} When the recorder is not running.
   */
  async cut(): Promise<Taken<CpuProfile>> {
    const inspector = this.#inspector;
    if (inspector === undefined) throw new Error("The recorder is stopped");
    const { profile } = await inspector.post<{ profile: CpuProfile }>(
      "Profiler.stop",
    );
    const startedAt = this.#startedAt;
    const endedAt = this.#startedAt = Date.now();
    await inspector.post("Profiler.start");
    return { profile, startedAt, endedAt, interval: this.#intervalUs };
  }

  /** Stops sampling; the piece in progress is dropped. */
  stop(): void {
    this.#inspector?.disconnect();
    this.#inspector = undefined;
  }
}
