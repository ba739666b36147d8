/**
 * The log level at run time: what `GET|PUT /admin/log-level` read and
 * change. A change applies to every logger at once, logs one audit line
 * (old level, new level, who asked), and with a time to live reverts by
 * itself: debug left on by mistake is a classic outage.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { logLevel, setLogLevel } from "../observability/logging.ts";
import type { LogLevelName } from "../settings.ts";
import type { Timer } from "../platform.ts";

/** What `GET /admin/log-level` answers. */
export interface LogLevelState {
  /** The lowest level written now. */
  readonly level: LogLevelName;
  /** While a change has a time to live: the level it reverts to. */
  readonly reverts_to?: LogLevelName;
  /** While a change has a time to live: when it reverts (ISO-8601 UTC). */
  readonly reverts_at?: string;
}

/** Who asked for a change, for the audit line. */
export interface Requester {
  /** The admin request's TCP peer. */
  readonly remoteAddr: string;
  /** The admin request's `User-Agent`. */
  readonly userAgent: string;
}

/** Changes the process's log level and reverts timed changes. */
export class LogLevelControl {
  readonly #log: Logger;
  #revert:
    | { timer: Timer; to: LogLevelName; at: number; ttlS: number }
    | undefined;

  /**
   * Creates the control; the level in force is the one logging was set up with.
   *
   * @param log The audit logger (`sockeye.admin`).
   */
  constructor(log: Logger) {
    this.#log = log;
  }

  /**
   * The level now, and the pending revert if any.
   *
   * @returns The state as the API shows it.
   */
  state(): LogLevelState {
    const revert = this.#revert;
    return revert === undefined ? { level: logLevel() } : {
      level: logLevel(),
      reverts_to: revert.to,
      reverts_at: new Date(revert.at).toISOString(),
    };
  }

  /**
   * Sets the level. With `ttlS` it reverts after that many seconds to the
   * level in force before the first timed change still pending; without,
   * a pending revert is cancelled.
   *
   * @param level The new level.
   * @param ttlS Seconds until it reverts; `undefined` for good.
   * @param by Who asked (logged).
   * @returns The state after the change.
   */
  set(
    level: LogLevelName,
    ttlS: number | undefined,
    by: Requester,
  ): LogLevelState {
    const base = this.#revert?.to ?? logLevel();
    this.#cancel();
    const previous = setLogLevel(level);
    if (ttlS !== undefined) {
      const timer = setTimeout(() => this.#expire(), ttlS * 1000);
      this.#revert = { timer, to: base, at: Date.now() + ttlS * 1000, ttlS };
    }
    this.#log.info("Log level changed from {old_level} to {new_level}", {
      old_level: previous,
      new_level: level,
      ...(ttlS === undefined ? {} : { ttl_s: ttlS, reverts_to: base }),
      remote_addr: by.remoteAddr,
      user_agent: by.userAgent,
    });
    return this.state();
  }

  /** Cancels a pending revert (the drain); the level stays as it is. */
  close(): void {
    this.#cancel();
  }

  #expire(): void {
    const revert = this.#revert;
    if (revert === undefined) return;
    this.#revert = undefined;
    const previous = setLogLevel(revert.to);
    this.#log.info(
      "Log level reverted from {old_level} to {new_level} after {ttl_s} s",
      { old_level: previous, new_level: revert.to, ttl_s: revert.ttlS },
    );
  }

  #cancel(): void {
    if (this.#revert === undefined) return;
    clearTimeout(this.#revert.timer);
    this.#revert = undefined;
  }
}
