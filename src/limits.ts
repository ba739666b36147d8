/**
 * The limits sockeye derives at start when they are not set: connections from
 * the open-file limit, the memory guard's limit, sessions from memory. Pure
 * functions of the settings and what the process can read about itself.
 *
 * @module
 */

/**
 * Descriptors kept back from the derived `MAX_CONNECTIONS` for Redis, OTLP,
 * logs, the runtime's own and in-flight HTTP requests: at least this many…
 */
export const FD_RESERVE_MIN = 64;
/** …or this share of the open-file limit, whichever is larger. */
export const FD_RESERVE_RATIO = 0.05;

/** The effective `MAX_CONNECTIONS` and where it came from. */
export interface ConnectionLimit {
  /** Most sockets open at once; 0 means unlimited. */
  readonly maxConnections: number;
  /**
   * `MAX_CONNECTIONS` (set explicitly), `open_file_limit` (derived from it)
   * or `unknown` (no setting, no readable limit: unlimited).
   */
  readonly source: "MAX_CONNECTIONS" | "open_file_limit" | "unknown";
}

/**
 * Works out `MAX_CONNECTIONS`: the setting when given (0 = unlimited), else
 * the open-file soft limit less a reserve of `max(64, ceil(5 % of it))`,
 * at least 1, so a full server answers 503 `max_connections` before its
 * accept loop runs out of descriptors.
 *
 * @param setting `MAX_CONNECTIONS`, `undefined` when unset.
 * @param fdLimit The open-file soft limit, `undefined` when unknown.
 * @returns The effective limit and its source.
 *
 * @example
 * ```ts
 * connectionLimit(undefined, 20000); // { maxConnections: 19000, source: "open_file_limit" }
 * connectionLimit(undefined, 1024); // { maxConnections: 960, source: "open_file_limit" }
 * ```
 */
export function connectionLimit(
  setting: number | undefined,
  fdLimit: number | undefined,
): ConnectionLimit {
  if (setting !== undefined) {
    return { maxConnections: setting, source: "MAX_CONNECTIONS" };
  }
  if (fdLimit === undefined) return { maxConnections: 0, source: "unknown" };
  const reserve = Math.max(
    FD_RESERVE_MIN,
    Math.ceil(fdLimit * FD_RESERVE_RATIO),
  );
  return {
    maxConnections: Math.max(1, fdLimit - reserve),
    source: "open_file_limit",
  };
}

/** The memory limit the guard works from, and where it came from. */
export interface MemoryLimit {
  /** Bytes. */
  readonly bytes: number;
  /** `MEMORY_LIMIT_BYTES` or `cgroup`. */
  readonly source: "MEMORY_LIMIT_BYTES" | "cgroup";
}

/**
 * Picks the memory guard's limit: `MEMORY_LIMIT_BYTES` when set (0 turns the
 * guard off), else the control group's limit.
 *
 * @param setting `MEMORY_LIMIT_BYTES`, `undefined` when unset.
 * @param cgroup The cgroup limit in bytes, `undefined` when none.
 * @returns The limit, or `undefined` when the guard is off.
 */
export function memoryLimit(
  setting: number | undefined,
  cgroup: number | undefined,
): MemoryLimit | undefined {
  if (setting !== undefined) {
    return setting > 0
      ? { bytes: setting, source: "MEMORY_LIMIT_BYTES" }
      : undefined;
  }
  return cgroup === undefined ? undefined : { bytes: cgroup, source: "cgroup" };
}

/** Bytes of resident memory one idle session record costs (measured). */
export const SESSION_RECORD_BYTES = 300;

/**
 * Works out `MAX_SESSIONS`: the setting when given, else a tenth of the
 * memory limit at {@link SESSION_RECORD_BYTES} each, between 10,000 and
 * 1,000,000; 250,000 (about 75 MB) when no limit is known.
 *
 * @param setting `MAX_SESSIONS`, `undefined` when unset.
 * @param memoryBytes The memory limit in bytes, `undefined` when none.
 * @returns Most sessions the memory store keeps.
 *
 * @example
 * ```ts
 * sessionLimit(undefined, 512 * 2 ** 20); // 178956
 * ```
 */
export function sessionLimit(
  setting: number | undefined,
  memoryBytes: number | undefined,
): number {
  if (setting !== undefined) return setting;
  if (memoryBytes === undefined) return 250_000;
  const derived = Math.floor(memoryBytes / 10 / SESSION_RECORD_BYTES);
  return Math.min(1_000_000, Math.max(10_000, derived));
}
