/**
 * Process facts and control: signals, environment, arguments, exit, memory,
 * CPU, file descriptors and the control group's memory limit.
 *
 * @module
 */
import process from "node:process";

/**
 * Calls `handler` on SIGTERM and SIGINT.
 *
 * @param handler Receives the signal's name.
 * @returns A function that removes the listeners.
 */
export function onShutdownSignal(
  handler: (signal: "SIGTERM" | "SIGINT") => void,
): () => void {
  const term = () => handler("SIGTERM");
  const int = () => handler("SIGINT");
  Deno.addSignalListener("SIGTERM", term);
  Deno.addSignalListener("SIGINT", int);
  return () => {
    Deno.removeSignalListener("SIGTERM", term);
    Deno.removeSignalListener("SIGINT", int);
  };
}

/**
 * Reads the whole environment (for settings, which parse it once).
 *
 * @returns Variable name → value.
 */
export function env(): Record<string, string> {
  return Deno.env.toObject();
}

/**
 * Reads the command line.
 *
 * @returns The arguments after the script or binary name.
 */
export function args(): readonly string[] {
  return Deno.args;
}

/**
 * Ends the process.
 *
 * @param code Exit code: 0 clean, 1 start-up failure, 2 bad settings.
 */
export function exit(code: number): never {
  Deno.exit(code);
}

/**
 * Names the runtime, for `app_info`.
 *
 * @returns e.g. `deno 2.9.6`.
 */
export function runtimeVersion(): string {
  return `deno ${Deno.version.deno}`;
}

/** Memory figures in bytes, from `Deno.memoryUsage()` (needs no permission). */
export function memoryUsage(): {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
} {
  return Deno.memoryUsage();
}

/**
 * Counts this process's open file descriptors from `/proc/self/fd`.
 *
 * Deno 2.9 lets only `--allow-all` read `/proc/self`, whatever `--allow-read`
 * names.
 *
 * @returns The count, or `undefined` where `/proc` is missing or unreadable.
 */
export function openFds(): number | undefined {
  try {
    // The listing includes the descriptor reading it: start at -1.
    let n = -1;
    for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
    return n;
  } catch {
    return undefined;
  }
}

/**
 * Reads the soft limit on open files from `/proc/self/limits` (needs
 * `--allow-all`, as {@link openFds}).
 *
 * @returns The limit, or `undefined` where it cannot be read.
 */
export function maxFds(): number | undefined {
  try {
    const text = Deno.readTextFileSync("/proc/self/limits");
    const m = text.match(/^Max open files\s+(\d+)/m);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Values at or above this mean "no limit" (cgroup v1 writes 2^63 rounded down to a page). */
const NO_MEMORY_LIMIT = 2 ** 62;

/**
 * Reads the memory limit of this process's control group: cgroup v2
 * `memory.max`, else cgroup v1 `memory.limit_in_bytes`; the process's own
 * group first (from `/proc/self/cgroup`), then the mount's root, which is the
 * container's own group under a cgroup namespace or Docker's v1 mounts.
 *
 * @returns The limit in bytes, or `undefined` when there is none (`max`, or
 *   v1's near-2^63 "unlimited") or it cannot be read.
 */
export function cgroupMemoryLimit(): number | undefined {
  let own: { v2?: string; v1?: string } = {};
  try {
    const text = Deno.readTextFileSync("/proc/self/cgroup");
    own = {
      v2: text.match(/^0::(\/.*)$/m)?.[1],
      v1: text.match(/^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(\/.*)$/m)?.[1],
    };
  } catch { /* no /proc: try the roots */ }
  const candidates = [
    own.v2 && own.v2 !== "/" && `/sys/fs/cgroup${own.v2}/memory.max`,
    "/sys/fs/cgroup/memory.max",
    own.v1 && own.v1 !== "/" &&
    `/sys/fs/cgroup/memory${own.v1}/memory.limit_in_bytes`,
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
  ];
  for (const path of candidates) {
    if (!path) continue;
    let text;
    try {
      text = Deno.readTextFileSync(path).trim();
    } catch {
      continue;
    }
    if (text === "max") return undefined;
    const bytes = Number(text);
    if (!Number.isFinite(bytes) || bytes <= 0) continue;
    return bytes >= NO_MEMORY_LIMIT ? undefined : bytes;
  }
  return undefined;
}

/**
 * Reads this process's CPU time since it started, from `getrusage(2)`
 * through `node:process` (µs resolution, no permission needed; `/proc/self/stat`
 * needs `--allow-all` on Deno).
 *
 * @returns User and system CPU seconds.
 */
export function cpuSeconds(): { user: number; system: number } {
  const { user, system } = process.cpuUsage();
  return { user: user / 1e6, system: system / 1e6 };
}

/** A timer handle as `setTimeout`/`setInterval` return it. */
export type Timer = ReturnType<typeof setTimeout>;

/**
 * Lets the process exit even while this timer is pending.
 *
 * @param timer From `setTimeout` or `setInterval`.
 */
export function unrefTimer(timer: Timer): void {
  timer.unref();
}

/**
 * Runs a shell command line with `sh -c`, its output going to this
 * process's stdout and stderr, stdin closed (for operator commands such as
 * `docker compose stop app_blue`).
 *
 * @param command The command line, as a POSIX shell reads it.
 * @returns The exit code (128 + the signal number when a signal ended it).
 * @throws {Deno.errors.NotFound} When there is no `sh`.
 */
export async function runShell(command: string): Promise<number> {
  const child = new Deno.Command("sh", {
    args: ["-c", command],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const status = await child.status;
  return status.code;
}
