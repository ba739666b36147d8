/**
 * Limits and errors of the Redis session store's commands: how long a
 * command, a connection or a `WAIT` may take, how large a batch may grow,
 * and what Redis's error replies mean for the frames that sent them.
 *
 * Increments never wait on a queue while Redis is away and fail as
 * {@link StoreUnavailableError} after {@link COMMAND_TIMEOUT_MS}; Redis's
 * own error replies pass through as they are.
 *
 * @module
 */
import { StoreUnavailableError } from "./store.ts";

/** Milliseconds a command may take before it fails as unavailable. */
export const COMMAND_TIMEOUT_MS = 1000;

/** Milliseconds a connection attempt may take. */
export const CONNECT_TIMEOUT_MS = 2000;

/**
 * Milliseconds, on Redis's clock, between a batch's deadline and the
 * earliest moment its frames can be answered unavailable.
 */
export const DEADLINE_MARGIN_MS = 50;

/** Milliseconds between measurements of Redis's clock while it answers. */
export const CLOCK_SYNC_INTERVAL_MS = 10_000;

/**
 * Milliseconds a batch's `WAIT` gives the replicas; well inside
 * {@link COMMAND_TIMEOUT_MS}, so a master whose replicas lag is told apart
 * from a master that stalls.
 */
export const WAIT_TIMEOUT_MS = 500;

/** Most frames sent to Redis in one script call. */
export const MAX_BATCH = 512;

/**
 * Most increment batches awaiting Redis at once, and the size of the ring of
 * batch records; further frames wait for a batch to return.
 */
export const MAX_IN_FLIGHT = 256;

/** A command got no reply within {@link COMMAND_TIMEOUT_MS}. */
export class CommandTimeoutError extends StoreUnavailableError {
  /**
   * Creates the error.
   *
   * @param what The command, for the message.
   */
  constructor(what: string) {
    super(`Redis did not answer ${what} within ${COMMAND_TIMEOUT_MS} ms`);
    this.name = "CommandTimeoutError";
  }
}

/**
 * A master has fewer replicas acknowledging writes than `waitReplicas`: it
 * lasts until a replica returns or the setting changes, so the recovery
 * says it once as a warning.
 */
export class ReplicasMissingError extends StoreUnavailableError {
  /**
   * Creates the error.
   *
   * @param message What fell short, sentence case.
   */
  constructor(message: string) {
    super(message);
    this.name = "ReplicasMissingError";
  }
}

/** Whether `error` is an error reply from Redis (ioredis `ReplyError`). */
export function isReplyError(error: unknown): boolean {
  return error instanceof Error && error.name === "ReplyError";
}

/**
 * What an error reply to a batch means. `moved`: the master does not serve
 * the batch's ring (a Cluster's slot map changed): nothing ran, send the
 * frames again. `unavailable`: a passing state (a master demoted, loading,
 * busy, a Cluster down): nothing ran, answer unavailable and recover.
 * `refused`: Redis will keep refusing (e.g. NOPERM, OOM): passed on as is.
 */
export function replyKind(error: Error): "moved" | "unavailable" | "refused" {
  const code = error.message.split(" ", 1)[0];
  switch (code) {
    case "MOVED":
    case "ASK":
    case "TRYAGAIN":
      return "moved";
    case "READONLY":
    case "MASTERDOWN":
    case "LOADING":
    case "BUSY":
    case "CLUSTERDOWN":
    case "NOREPLICAS":
      return "unavailable";
    default:
      return "refused";
  }
}

/** Whether a refusal says the connection reached a replica, not a master. */
export function isReplicaRefusal(error: unknown): boolean {
  const message = error instanceof Error ? error.message : "";
  return message.startsWith("READONLY") ||
    message.startsWith("WAIT cannot be used with replica");
}

/**
 * Maps an ioredis error to the store's errors.
 *
 * @returns {@link StoreUnavailableError} for connection trouble and timeouts;
 *   Redis's own error replies (`ReplyError`, e.g. WRONGTYPE) pass through as
 *   they are, since retrying cannot fix them.
 */
export function translate(error: unknown): Error {
  if (error instanceof StoreUnavailableError || isReplyError(error)) {
    return error as Error;
  }
  const message = error instanceof Error ? error.message : String(error);
  return new StoreUnavailableError(`Redis unavailable: ${message}`, {
    cause: error,
  });
}

/**
 * Rejects with {@link CommandTimeoutError} when `promise` takes too long, or
 * with {@link StoreUnavailableError} once `signal` aborts (the store closed:
 * no timer outlives it).
 */
export function timed<T>(
  promise: Promise<T>,
  what: string,
  signal?: AbortSignal,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new CommandTimeoutError(what)),
      COMMAND_TIMEOUT_MS,
    );
    const abort = () => {
      clearTimeout(timer);
      reject(new StoreUnavailableError("Session store closed"));
    };
    signal?.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    });
  });
}

/**
 * Reads a session count from a Redis reply.
 *
 * @param reply The reply (a number or a decimal string).
 * @param key The session key, for the error message.
 * @returns The count, a non-negative safe integer.
 * @throws {TypeError} When the reply holds no such integer.
 */
export function parseCount(reply: unknown, key: string): number {
  const n = typeof reply === "number" ? reply : Number(reply);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new TypeError(
      `Cannot read session count at ${key}: expected an integer, got ${
        JSON.stringify(reply)
      }`,
    );
  }
  return n;
}
