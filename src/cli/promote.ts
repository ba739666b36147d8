/**
 * `sockeye promote COLOR`: a blue/green release with a check at every step.
 *
 * 1. COLOR is ready (`/readyz` 200);
 * 2. a smoke test of COLOR itself: a WebSocket round trip compared byte for
 *    byte (`{"count": 1}` on a fresh session), then a resume with
 *    `sockeye.v1` (the session frame with `"count": 1, "resumed": true`, then
 *    `{"count": 2}`);
 * 3. the proxy's upstream file names COLOR, and the proxy is reloaded;
 * 4. the same smoke test through the proxy, once its `/healthz` reports
 *    COLOR; if it fails, the upstream file is restored, the proxy reloaded,
 *    the old color keeps serving, exit 1;
 * 5. the old color drains (SIGTERM through the drain command, never a kill
 *    that would disable its restart policy) and is waited for until it has
 *    exited;
 * 6. the old color is started again and waited for until ready: the standby,
 *    and the rollback target.
 *
 * Every step prints its duration; `--dry-run` prints the plan. The commands
 * (reload the proxy, drain a color, start a color) default to the compose
 * stack and can be replaced, e.g. to drive local processes.
 *
 * @module
 */
import { type CommandSpec, parseCommand, usageError } from "./_args.ts";
import {
  print,
  printError,
  readTextFile,
  replaceTextFile,
  runShell,
} from "../platform.ts";
import {
  get,
  httpBase,
  shown,
  smokeTest,
  StepFailed,
  wsBase,
} from "./promote_smoke.ts";

export { smokeTest } from "./promote_smoke.ts";

/** A deployment color. */
export type Color = "blue" | "green";

/** Options for {@link runPromote}. */
export interface PromoteOptions {
  /** The color to make live. */
  readonly target: Color;
  /** nginx file holding `upstream sockeye_live { server …; }`. */
  readonly upstreamFile: string;
  /** Each color reached directly, e.g. `http://127.0.0.1:8081`. */
  readonly urls: Readonly<Record<Color, string>>;
  /** Each color as the proxy reaches it (`host:port`), e.g. `app_blue:8000`. */
  readonly upstreams: Readonly<Record<Color, string>>;
  /** The proxy, e.g. `http://127.0.0.1:8080`. */
  readonly proxyUrl: string;
  /** Shell command that reloads the proxy. */
  readonly reloadCmd: string;
  /** Shell command that drains a color with SIGTERM; `{color}` is replaced. */
  readonly drainCmd: string;
  /** Shell command that starts a color; `{color}` is replaced. */
  readonly startCmd: string;
  /** Upper bound in seconds of each wait: proxy on the new color, drain, standby ready. */
  readonly timeoutS: number;
  /** Print the steps and change nothing. */
  readonly dryRun: boolean;
  /** Where step lines go; stdout by default. */
  readonly out?: (line: string) => void;
}

const OTHER: Readonly<Record<Color, Color>> = { blue: "green", green: "blue" };

/**
 * The upstream file naming `address` as the live color.
 *
 * @param color The color it names.
 * @param address `host:port` as the proxy reaches it.
 * @returns The file's text, for nginx's `include`.
 */
export function upstreamConf(color: Color, address: string): string {
  return `# The live color: ${color}. Promote with \`sockeye promote\` ` +
    "(monitoring/nginx/promote.sh).\n" +
    `upstream sockeye_live {\n  server ${address};\n}\n`;
}

/**
 * Whether an upstream file's text names `address` as its server.
 *
 * @param text The upstream file.
 * @param address `host:port`.
 * @returns `true` when a `server address;` line is in it.
 */
function names(text: string, address: string): boolean {
  return text.split("\n").some((line) =>
    line.replace(/#.*/, "").trim() === `server ${address};`
  );
}

/** Polls `check` every 100 ms until it returns a string or time runs out. */
async function waitFor(
  check: () => Promise<string | undefined>,
  timeoutMs: number,
  failure: () => string,
): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  while (true) {
    const done = await check();
    if (done !== undefined) return done;
    if (performance.now() >= deadline) throw new StepFailed(failure());
    await new Promise((r) => setTimeout(r, 100));
  }
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(3);
}

/**
 * Makes `options.target` the live color, checking every step (see the
 * module's documentation).
 *
 * @param options Colors, proxy, commands and limits.
 * @returns Exit code: 0 promoted (or already live) with the other color back
 *   as the ready standby; 1 when a step failed (what was left is printed).
 */
export async function runPromote(options: PromoteOptions): Promise<number> {
  const out = options.out ?? print;
  const target = options.target;
  const old = OTHER[target];
  const url = (c: Color) => httpBase(options.urls[c]);
  const cmd = (template: string, color: Color) =>
    template.replaceAll("{color}", color);
  const waitMs = options.timeoutS * 1000;
  // A frame answered in 10 s is an answer; a smoke test waits no longer.
  const smokeMs = Math.min(waitMs, 10_000);
  const file = options.upstreamFile;
  const drainCmd = cmd(options.drainCmd, old);
  const startCmd = cmd(options.startCmd, old);
  const smokeWhat = '{"count": 1}, resumed with sockeye.v1: ' +
    '"count": 1, "resumed": true, then {"count": 2}';

  let previous: string;
  try {
    previous = readTextFile(file);
  } catch (error) {
    printError(
      `sockeye promote: cannot read the upstream file "${file}": ${
        (error as Error).message
      }`,
    );
    return 1;
  }
  if (names(previous, options.upstreams[target])) {
    out(
      `${target} is already live (${file} names ${
        options.upstreams[target]
      }): nothing to do`,
    );
    return 0;
  }

  interface Step {
    readonly title: string;
    readonly plan: string;
    run(): Promise<string>;
  }
  let oldWasRunning = true;
  let oldSockets: unknown;
  const steps: Step[] = [
    {
      title: `${target} ready`,
      plan: `GET ${url(target)}/readyz answers 200`,
      async run() {
        const res = await get(`${url(target)}/readyz`, smokeMs);
        if (res === undefined) {
          throw new StepFailed(`${url(target)}/readyz does not answer`);
        }
        if (res.status !== 200) {
          throw new StepFailed(
            `${url(target)}/readyz answered ${res.status} ${
              shown(JSON.stringify(res.body))
            }`,
          );
        }
        if (res.body.color !== undefined && res.body.color !== target) {
          throw new StepFailed(
            `${url(target)} is ${
              JSON.stringify(res.body.color)
            }, not ${target}`,
          );
        }
        return `/readyz 200, ${res.body.active_connections ?? "?"} sockets`;
      },
    },
    {
      title: `smoke test ${target}`,
      plan: `${wsBase(url(target))}/ws/chat/ answers ${smokeWhat}`,
      async run() {
        const id = await smokeTest(url(target), smokeMs);
        return `exact frames, resumed (session ${id})`;
      },
    },
    {
      title: `proxy → ${target}`,
      plan: `write ${file} (server ${
        options.upstreams[target]
      };), run: ${options.reloadCmd}`,
      async run() {
        await replaceTextFile(
          file,
          upstreamConf(target, options.upstreams[target]),
        );
        const code = await runShell(options.reloadCmd);
        if (code !== 0) {
          throw new StepFailed(`the reload command exited ${code}`);
        }
        return `${file} names ${options.upstreams[target]}; reloaded`;
      },
    },
    {
      title: "smoke test via the proxy",
      plan: `${httpBase(options.proxyUrl)}/healthz reports ${target}; ${
        wsBase(options.proxyUrl)
      }/ws/chat/ answers as in step 2; else restore ${file}, reload, exit 1`,
      async run() {
        let seen = "no answer";
        // Several answers in a row: after a reload, workers of the old
        // configuration accept for a moment longer.
        let inARow = 0;
        await waitFor(
          async () => {
            const res = await get(
              `${httpBase(options.proxyUrl)}/healthz`,
              2000,
            );
            seen = res === undefined
              ? "no answer"
              : `${res.status} ${JSON.stringify(res.body.color ?? null)}`;
            const on = res?.status === 200 && res.body.color === target;
            inARow = on ? inARow + 1 : 0;
            return inARow >= 3 ? "ok" : undefined;
          },
          waitMs,
          () =>
            `${
              httpBase(options.proxyUrl)
            }/healthz did not report ${target} within ${options.timeoutS} s (last: ${seen})`,
        );
        await smokeTest(options.proxyUrl, smokeMs);
        return `/healthz reports ${target}; exact frames, resumed`;
      },
    },
    {
      title: `drain ${old}`,
      plan: `run: ${drainCmd}; wait until ${
        url(old)
      }/healthz stops answering (at most ${options.timeoutS} s)`,
      async run() {
        const before = await get(`${url(old)}/readyz`, 2000);
        if (before === undefined) {
          oldWasRunning = false;
          return `${old} was not running: nothing to drain`;
        }
        oldSockets = before.body.active_connections;
        const started = performance.now();
        const code = await runShell(drainCmd);
        if (code !== 0) {
          throw new StepFailed(`the drain command exited ${code}`);
        }
        await waitFor(
          async () =>
            await get(`${url(old)}/healthz`, 2000) === undefined
              ? "gone"
              : undefined,
          Math.max(0, waitMs - (performance.now() - started)),
          () =>
            `${old} still answers ${options.timeoutS} s after the drain began`,
        );
        return `held ${oldSockets ?? "?"} sockets; exited`;
      },
    },
    {
      title: `${old} back as standby`,
      plan: `run: ${startCmd}; wait for ${
        url(old)
      }/readyz 200 (at most ${options.timeoutS} s)`,
      async run() {
        const code = await runShell(startCmd);
        if (code !== 0) {
          throw new StepFailed(`the start command exited ${code}`);
        }
        let seen = "no answer";
        await waitFor(
          async () => {
            const res = await get(`${url(old)}/readyz`, 2000);
            seen = res === undefined ? "no answer" : String(res.status);
            return res?.status === 200 ? "ready" : undefined;
          },
          waitMs,
          () =>
            `${
              url(old)
            }/readyz not 200 within ${options.timeoutS} s (last: ${seen})`,
        );
        return `/readyz 200${oldWasRunning ? "" : " (it was not running)"}`;
      },
    },
  ];

  const width = Math.max(...steps.map((s) => s.title.length)) + 2;
  const line = (i: number, title: string, rest: string) =>
    `${i + 1}/${steps.length} ${title.padEnd(width)}${rest}`;
  if (options.dryRun) {
    out(`promote ${target} (dry run: nothing is changed)`);
    steps.forEach((s, i) => out(line(i, s.title, s.plan)));
    return 0;
  }

  out(`promote ${target}: the proxy moves from ${old} to ${target}`);
  const started = performance.now();
  const rollBack = async (): Promise<string> => {
    try {
      await replaceTextFile(file, previous);
    } catch (error) {
      return `ROLLBACK FAILED: cannot restore ${file}: ${
        (error as Error).message
      }`;
    }
    const code = await runShell(options.reloadCmd);
    return code === 0
      ? `rolled back: ${file} restored and the proxy reloaded; ${old} serves`
      : `ROLLBACK INCOMPLETE: ${file} restored, but the reload command exited ${code}`;
  };
  for (const [i, step] of steps.entries()) {
    const t0 = performance.now();
    try {
      const detail = await step.run();
      out(
        line(i, step.title, `${seconds(performance.now() - t0)} s  ${detail}`),
      );
    } catch (error) {
      const why = error instanceof StepFailed
        ? error.message
        : `${(error as Error).name}: ${(error as Error).message}`;
      out(
        line(
          i,
          step.title,
          `${seconds(performance.now() - t0)} s  FAILED: ${why}`,
        ),
      );
      let outcome: string;
      if (i <= 1) {
        outcome = `nothing changed: the proxy still sends clients to ${old}`;
      } else if (i <= 3) {
        outcome = await rollBack();
      } else {
        outcome = `${target} is live; ${old} is not back as the standby ` +
          `(start it with: ${startCmd})`;
      }
      out(outcome);
      printError(`sockeye promote: ${step.title}: ${why}; ${outcome}`);
      return 1;
    }
  }
  out(
    `promoted ${target} in ${
      seconds(performance.now() - started)
    } s; ${old} is the ready standby`,
  );
  return 0;
}

const PROMOTE = {
  name: "promote",
  summary: "Makes COLOR (blue or green) the live color behind the proxy, " +
    "checking each step:\n" +
    "1. COLOR is ready (/readyz 200); 2. smoke test of COLOR: a WebSocket " +
    "round trip with exact\nbytes and a resume; 3. the upstream file names " +
    "COLOR, the proxy reloads; 4. the smoke\ntest through the proxy once its " +
    "/healthz reports COLOR, else the file is restored and\nthe proxy " +
    "reloaded (exit 1); 5. the other color drains (SIGTERM, never a kill) " +
    "until it\nhas exited; 6. it is started again and waited for until ready: " +
    "the standby.\nEach step prints its duration. The defaults drive the " +
    "compose stack from the folder\nholding compose.yml; {color} in a " +
    "command is the color it acts on.",
  positionals: ["COLOR"],
  options: {
    "upstream-file": {
      type: "string",
      arg: "PATH",
      default: "monitoring/nginx/upstream.conf",
      doc: "nginx file naming the live color",
    },
    "blue-url": {
      type: "string",
      arg: "URL",
      default: "http://127.0.0.1:8081",
      doc: "blue, reached directly",
    },
    "green-url": {
      type: "string",
      arg: "URL",
      default: "http://127.0.0.1:8082",
      doc: "green, reached directly",
    },
    "blue-upstream": {
      type: "string",
      arg: "HOST:PORT",
      default: "app_blue:8000",
      doc: "blue as the proxy reaches it",
    },
    "green-upstream": {
      type: "string",
      arg: "HOST:PORT",
      default: "app_green:8000",
      doc: "green as the proxy reaches it",
    },
    "proxy-url": {
      type: "string",
      arg: "URL",
      default: "http://127.0.0.1:8080",
      doc: "the proxy",
    },
    "reload-cmd": {
      type: "string",
      arg: "CMD",
      default: "docker compose exec -T proxy nginx -s reload",
      doc: "reloads the proxy",
    },
    "drain-cmd": {
      type: "string",
      arg: "CMD",
      default: "docker compose stop app_{color}",
      doc: "drains a color with SIGTERM and waits for it",
    },
    "start-cmd": {
      type: "string",
      arg: "CMD",
      default: "docker compose start app_{color}",
      doc: "starts a color again",
    },
    timeout: {
      type: "string",
      arg: "S",
      default: "60",
      doc: "bound of each wait (proxy, drain, standby ready)",
    },
    "dry-run": {
      type: "boolean",
      default: false,
      doc: "print the steps and change nothing",
    },
  },
  footer: "Exit codes: 0 promoted (or COLOR already live), the other color " +
    "the ready standby;\n1 a step failed (the output says what was left: " +
    "before the switch nothing changed,\nafter a failed check through the " +
    "proxy the switch is undone); 2 bad command line.",
} as const satisfies CommandSpec;

/**
 * The `promote` subcommand.
 *
 * @param args `COLOR` and options (see `--help`).
 * @returns Exit code: 0 promoted; 1 a step failed; 2 bad command line.
 */
export async function promoteCommand(args: readonly string[]): Promise<number> {
  const parsed = parseCommand(PROMOTE, args);
  if (typeof parsed === "number") return parsed;
  const { values, positionals } = parsed;
  const bad = (message: string) => usageError("promote", message);
  const target = positionals[0];
  if (target !== "blue" && target !== "green") {
    return bad(
      target === undefined
        ? "promote needs a COLOR: blue or green"
        : `cannot promote "${target}": expected blue or green`,
    );
  }
  for (const name of ["blue-url", "green-url", "proxy-url"] as const) {
    const v = values[name];
    if (!/^https?:\/\/[^/]/.test(v) || !URL.canParse(v)) {
      return bad(
        `cannot parse --${name} "${v}" for promote: expected an http:// or https:// URL`,
      );
    }
  }
  for (const name of ["blue-upstream", "green-upstream"] as const) {
    // Written into nginx's config: nothing but a host and a port.
    if (!/^[A-Za-z0-9._\[\]:-]+:[0-9]{1,5}$/.test(values[name])) {
      return bad(
        `cannot parse --${name} "${
          values[name]
        }" for promote: expected HOST:PORT`,
      );
    }
  }
  const timeoutS = Number(values.timeout);
  if (!(timeoutS > 0) || timeoutS > 2147483) {
    return bad(
      `cannot parse --timeout "${values.timeout}" for promote: expected seconds above 0`,
    );
  }
  return await runPromote({
    target,
    upstreamFile: values["upstream-file"],
    urls: { blue: values["blue-url"], green: values["green-url"] },
    upstreams: {
      blue: values["blue-upstream"],
      green: values["green-upstream"],
    },
    proxyUrl: values["proxy-url"],
    reloadCmd: values["reload-cmd"],
    drainCmd: values["drain-cmd"],
    startCmd: values["start-cmd"],
    timeoutS,
    dryRun: values["dry-run"],
  });
}
