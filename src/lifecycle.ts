/**
 * The process lifecycle: starting → ready → draining → stopped, with the
 * timings the contract reports (`app_startup_time_seconds`,
 * `app_shutdown_time_seconds`).
 *
 * Probe semantics follow Kubernetes: liveness (`/healthz`) holds in every
 * state; readiness (`/readyz`) only in `ready`, and only while no
 * {@link Fault} lasts.
 *
 * @module
 */

/** Where the process is in its life. */
export type LifecycleState = "starting" | "ready" | "draining" | "stopped";

/**
 * A temporary condition that fails readiness while it lasts, named as its
 * `/readyz` check: `listener` (the accept loop failed, e.g. out of file
 * descriptors; re-listening) or `process_memory` (resident memory above the
 * memory guard's threshold; new WebSockets are refused).
 */
export type Fault = "listener" | "process_memory";

/** The state machine; transitions only go forward. */
export class Lifecycle {
  #state: LifecycleState = "starting";
  #acceptingUpgrades = true;
  #startupSeconds: number | undefined;
  readonly #faults = new Map<Fault, string>();
  #drainStartedAt: number | undefined;
  readonly #createdAt = performance.now();

  /** The current state. */
  get state(): LifecycleState {
    return this.#state;
  }

  /**
   * Whether new WebSocket upgrades are accepted: in `starting` and `ready`,
   * and during the drain delay so load balancers can catch up.
   */
  get acceptingUpgrades(): boolean {
    return this.#acceptingUpgrades;
  }

  /** Faults lasting now, each with what is wrong (e.g. `Too many open files`). */
  get faults(): ReadonlyMap<Fault, string> {
    return this.#faults;
  }

  /**
   * Records a fault, or updates its detail: readiness fails until
   * {@link Lifecycle.clear} is called for it.
   *
   * @param fault Which condition.
   * @param detail What is wrong, for the `/readyz` check (`error: <detail>`).
   */
  fail(fault: Fault, detail: string): void {
    this.#faults.set(fault, detail);
  }

  /**
   * Ends a fault.
   *
   * @param fault Which condition.
   */
  clear(fault: Fault): void {
    this.#faults.delete(fault);
  }

  /** Seconds since this server was created. */
  get uptimeSeconds(): number {
    return (performance.now() - this.#createdAt) / 1000;
  }

  /** Seconds from process start to ready, once ready. */
  get startupSeconds(): number | undefined {
    return this.#startupSeconds;
  }

  /**
   * Marks the service ready.
   *
   * @returns Seconds from process start (the runtime's time origin) to now.
   */
  ready(): number {
    if (this.#state === "starting") {
      this.#state = "ready";
      this.#startupSeconds = performance.now() / 1000;
    }
    return this.#startupSeconds ?? 0;
  }

  /**
   * Starts the drain: readiness fails from now on.
   *
   * @returns `false` when a drain had already started.
   */
  drain(): boolean {
    if (this.#state === "draining" || this.#state === "stopped") return false;
    this.#state = "draining";
    this.#drainStartedAt = performance.now();
    return true;
  }

  /** Refuses new upgrades (after the drain delay). */
  refuseUpgrades(): void {
    this.#acceptingUpgrades = false;
  }

  /** Seconds since the drain started, 0 before it. */
  get drainSeconds(): number {
    return this.#drainStartedAt === undefined
      ? 0
      : (performance.now() - this.#drainStartedAt) / 1000;
  }

  /** Marks the process stopped. */
  stop(): void {
    this.#state = "stopped";
    this.#acceptingUpgrades = false;
  }
}

/**
 * Rounds seconds to microseconds, for log lines.
 *
 * @param seconds A duration in seconds.
 * @returns The same, rounded to 6 decimals.
 */
export function roundSeconds(seconds: number): number {
  return Math.round(seconds * 1e6) / 1e6;
}
