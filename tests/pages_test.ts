// deno-lint-ignore-file no-console -- the test reports the page weight and where the screenshots went
/**
 * The pages in a real browser: Debian's `chromium` driven by playwright-core
 * against a sockeye subprocess started from an empty temporary directory,
 * so the pages can only come from the module graph, never from files beside
 * the working directory.
 *
 * Screenshots go to a temporary directory; with `UPDATE_SCREENSHOTS=1`
 * they replace `docs/client-page.png` and `docs/admin-page.png`.
 */
import assert from "node:assert/strict";
import { type Browser, chromium, type Page } from "playwright-core";
import {
  ROOT,
  spawnServer,
  startTestServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const UPDATE = Deno.env.get("UPDATE_SCREENSHOTS") === "1";
/** Upper bound for a browser wait, in ms (Chromium is slow on busy cores). */
const PAGE_WAIT_MS = 15_000;

async function launch(): Promise<Browser> {
  return await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: PAGE_WAIT_MS,
  });
}

/** Console errors and uncaught exceptions of a page. */
function consoleErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(e.message));
  return errors;
}

/** Saves a screenshot: into docs/ with UPDATE_SCREENSHOTS=1, else `dir`. */
async function screenshot(page: Page, name: string, dir: string) {
  const path = UPDATE ? `${ROOT}docs/${name}` : `${dir}/${name}`;
  await page.screenshot({ path, fullPage: true });
  const png = await Deno.readFile(path);
  // The PNG signature: a real image was written.
  assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  console.log(`screenshot: ${path} (${png.length} bytes)`);
}

/** Headers of a page answer that a strict policy needs. */
async function assertSecurityHeaders(url: string) {
  const res = await fetch(url);
  await res.body?.cancel();
  assert.equal(res.status, 200, url);
  const csp = res.headers.get("content-security-policy") ?? "";
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  assert.equal(res.headers.get("referrer-policy"), "no-referrer");
}

Deno.test("the client page at / connects, counts, resumes from its link and shows the drain's bye and 1001", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "sockeye-pages-" });
  const browser = await launch();
  try {
    await using server = await spawnServer({ HEARTBEAT_INTERVAL_S: "1" }, {
      cwd,
    });
    const base = `http://127.0.0.1:${server.port}`;
    await assertSecurityHeaders(`${base}/`);
    const page = await browser.newPage({
      viewport: { width: 820, height: 900 },
    });
    page.setDefaultTimeout(PAGE_WAIT_MS);
    const errors = consoleErrors(page);
    // Page weight: every response body and header of the first load.
    const loaded: { url: string; bytes: number }[] = [];
    page.on("requestfinished", async (request) => {
      const sizes = await request.sizes();
      loaded.push({
        url: request.url(),
        bytes: sizes.responseBodySize + sizes.responseHeadersSize,
      });
    });
    await page.goto(`${base}/`, { waitUntil: "load" });
    // The HTML, its stylesheet and its script; the icon is a data: URL.
    await until(() => loaded.length >= 3, "the first load's three responses");
    assert.deepEqual(loaded.map((r) => new URL(r.url).pathname).sort(), [
      "/",
      "/assets/client.js",
      "/assets/page.css",
    ]);
    const firstLoad = loaded.reduce((sum, r) => sum + r.bytes, 0);
    console.log(`page weight of / on first load: ${firstLoad} bytes`);
    assert.ok(firstLoad < 100_000, `${firstLoad} bytes on first load`);

    const state = page.locator("#state");
    const frame = (kind: string, text: string) =>
      page.locator(`#log li[data-kind="${kind}"]`, { hasText: text });
    await page.locator("#open").click();
    await state.getByText("open · sockeye.v1").waitFor();
    await frame("session", '"resumed": false').waitFor();
    for (const text of ["one", "two", "three"]) {
      await page.locator("#message").fill(text);
      await page.locator("#message").press("Enter");
    }
    await frame("count", '{"count": 3}').waitFor();
    const session = await page.locator("#session-id").textContent();
    assert.match(session ?? "", /^[0-9a-f-]{36}$/);

    // The page's own link reloads it on the same session: resumed at 3.
    await page.locator("#share").click();
    await page.waitForURL(`${base}/?session_uuid=${session}`);
    await frame("session", `"session_uuid": "${session}", "count": 3`)
      .waitFor();
    await frame("session", '"resumed": true').waitFor();
    await page.locator("#message").fill("four");
    await page.locator("#message").press("Enter");
    await frame("count", '{"count": 4}').waitFor();
    await frame("heartbeat", '{"ts": "').first().waitFor();

    server.child.kill("SIGTERM");
    await frame("bye", '{"bye": true, "total": 4}').waitFor();
    await frame("close", "1001").waitFor();
    await state.getByText("closed · 1001").waitFor();
    assert.equal((await within(server.status, "the exit")).code, 0);
    assert.deepEqual(errors, []);
    await screenshot(page, "client-page.png", cwd);
  } finally {
    await browser.close();
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("the admin page refuses without the token, then shows connections live, disconnects with 4001, sets the log level and sees the drain", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "sockeye-pages-" });
  const token = "page-test-token";
  const browser = await launch();
  try {
    await using server = await spawnServer({
      ADMIN_PORT: "0",
      ADMIN_TOKEN: token,
    }, { cwd });
    const ready = await server.waitForLine(
      (l) => typeof l.admin_port === "number",
      "the ready line",
    );
    const admin = `http://127.0.0.1:${ready.admin_port}`;
    const ws = `ws://127.0.0.1:${server.port}/ws/chat/`;
    await assertSecurityHeaders(`${admin}/admin/`);
    const page = await browser.newPage({
      viewport: { width: 1000, height: 900 },
    });
    page.setDefaultTimeout(PAGE_WAIT_MS);

    // Without the token: the page loads, the API answers 401, the page says so.
    await page.goto(`${admin}/admin/`);
    await page.locator("#refused").getByText("Refused (401)").waitFor();
    assert.equal(await page.locator("#dash").isHidden(), true);

    await page.locator("#token").fill(token);
    await page.locator("#token").press("Enter");
    const active = page.locator("#active");
    await active.getByText("0", { exact: true }).waitFor();
    await page.locator("#state").getByText("ready").waitFor();

    await using a = await TestClient.open(`${ws}?session_uuid=page-a`);
    await using b = await TestClient.open(`${ws}?session_uuid=page-b`);
    await active.getByText("2", { exact: true }).waitFor();
    for (let i = 0; i < 5; i++) await a.ask(`a${i}`);
    await b.ask("b");
    const rowA = page.locator('#connections tr[data-session="page-a"]');
    await rowA.getByRole("cell", { name: "5", exact: true }).waitFor();
    // A few seconds of traffic, so the charts have lines to show.
    await until(
      async () => {
        await b.ask("more");
        const points = await page.locator("#chart-messages polyline")
          .getAttribute("points");
        return (points?.split(" ").length ?? 0) >= 6;
      },
      "six points on the messages chart",
      { intervalMs: 100 },
    );
    await page.locator("#latency").getByText("/").waitFor();
    await screenshot(page, "admin-page.png", cwd);

    // The disconnect button closes that client with 4001.
    await rowA.getByRole("button", { name: "Disconnect session page-a" })
      .click();
    const closed = await within(a.closed, "client a's close");
    assert.equal(closed.code, 4001);
    await active.getByText("1", { exact: true }).waitFor();
    await b.close();
    await active.getByText("0", { exact: true }).waitFor();

    // The log-level switch changes what the API reports.
    await page.locator("#level").selectOption("debug");
    await until(async () => {
      const res = await fetch(`${admin}/admin/log-level`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      return (await res.json()).level === "debug";
    }, "GET /admin/log-level to report debug");

    // The drain ends the event stream, and the page says so.
    server.child.kill("SIGTERM");
    await page.locator("#state").getByText("stopped · stream ended").waitFor();
    assert.equal((await within(server.status, "the exit")).code, 0);
    await page.close();
  } finally {
    await browser.close();
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("the pages follow the admin API's listener; /admin/events streams the /metrics figures and ends with the drain", async () => {
  await using split = await startTestServer({
    ADMIN_PORT: "0",
    ADMIN_TOKEN: "t",
  });
  const adminBase = `http://127.0.0.1:${split.server.adminPort}`;
  const get = async (url: string, init: RequestInit = {}) => {
    const res = await fetch(url, { redirect: "manual", ...init });
    await res.body?.cancel();
    return res;
  };
  // Public port: the client page, no operator page.
  assert.equal((await get(split.http("/"))).status, 200);
  assert.equal((await get(split.http("/assets/client.js"))).status, 200);
  assert.equal((await get(split.http("/admin/"))).status, 404);
  // Admin port: the operator page without the token, its data only with it.
  assert.equal((await get(`${adminBase}/admin/`)).status, 200);
  assert.equal(
    (await get(`${adminBase}/admin/assets/admin.js`)).headers.get(
      "content-type",
    ),
    "text/javascript; charset=utf-8",
  );
  assert.equal((await get(`${adminBase}/admin/events`)).status, 401);
  assert.equal(
    (await get(`${adminBase}/`)).headers.get("location"),
    "/admin/",
  );
  assert.equal(
    (await get(`${adminBase}/admin`)).headers.get("location"),
    "/admin/",
  );

  // One listener on a public address without ADMIN_TOKEN: no admin API, so
  // no operator page either (routeSplit).
  await using open = await startTestServer({ HOST: "0.0.0.0" });
  const openBase = `http://127.0.0.1:${open.port}`;
  assert.equal((await get(`${openBase}/`)).status, 200);
  assert.equal((await get(`${openBase}/admin/`)).status, 404);

  // The event stream: the same numbers as /metrics, then `end` at the drain.
  await using server = await startTestServer();
  await using client = await TestClient.open(server.ws());
  await client.ask("one");
  const res = await fetch(server.http("/admin/events"));
  assert.equal(
    res.headers.get("content-type"),
    "text/event-stream; charset=utf-8",
  );
  const events = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const nextEvent = async () => {
    while (!text.includes("\n\n")) {
      const { value, done } = await within(events.read(), "an event");
      if (done) throw new Error("The event stream ended");
      text += value;
    }
    const end = text.indexOf("\n\n");
    const block = text.slice(0, end);
    text = text.slice(end + 2);
    return block;
  };
  const first = JSON.parse((await nextEvent()).replace(/^data: /, ""));
  assert.equal(first.active_connections, 1);
  assert.equal(first.state, "ready");
  assert.deepEqual(first.store, { kind: "memory", up: true });
  assert.equal(first.messages_per_second, null, "no rate before two scrapes");
  await client.ask("two");
  const second = JSON.parse((await nextEvent()).replace(/^data: /, ""));
  assert.ok(second.messages_per_second > 0, JSON.stringify(second));
  assert.ok(second.latency_seconds.p99 >= second.latency_seconds.p50);
  await client.close();
  // The drain ends the stream, so it does not hold the listener open.
  const drained = server.server.drain("test");
  let block = await nextEvent();
  while (!block.startsWith("event: end")) block = await nextEvent();
  assert.equal(block, 'event: end\ndata: {"state":"stopped"}');
  assert.equal((await events.read()).done, true);
  await within(drained, "the drain");
});
