/**
 * The pages: a WebSocket client at `/` beside the upgrade, and the operator
 * page at `/admin/` beside the admin API. Their HTML, CSS and JavaScript
 * (in `web/`, the browser's files, kept out of `src/`) are text imports, so they are part of the module graph and `deno compile`
 * carries them inside the binary: nothing is read from disk at run time and
 * nothing needs building. Every page answer carries a strict
 * Content-Security-Policy (this origin only, no inline script or style),
 * `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
 *
 * The operator page is public HTML and JavaScript holding no data; it asks
 * for `ADMIN_TOKEN` and calls the admin API with it, so the bearer check of
 * the API stays the only gate.
 *
 * @module
 */
import type { Context, Hono } from "hono";
import type { AppEnv } from "./app.ts";
import adminHtml from "../web/admin.html" with { type: "text" };
import adminJs from "../web/admin.js" with { type: "text" };
import clientHtml from "../web/client.html" with { type: "text" };
import clientJs from "../web/client.js" with { type: "text" };
import pageCss from "../web/page.css" with { type: "text" };

/** The pages' Content-Security-Policy: this origin only, nothing inline. */
export const CONTENT_SECURITY_POLICY: string = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  // The pages' icon is an empty data: URL, so browsers ask for no favicon.
  "img-src 'self' data:",
  // fetch() to the admin API and the WebSocket to this host.
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** One embedded file: its body and content type. */
interface Asset {
  readonly body: string;
  readonly type: string;
}

const HTML = "text/html; charset=utf-8";
const JS = "text/javascript; charset=utf-8";
const CSS = "text/css; charset=utf-8";

/** Path → file of the client page (relative to `/`). */
const CLIENT_ASSETS: Readonly<Record<string, Asset>> = {
  "/": { body: clientHtml, type: HTML },
  "/assets/client.js": { body: clientJs, type: JS },
  "/assets/page.css": { body: pageCss, type: CSS },
};

/** Path → file of the operator page. */
const ADMIN_ASSETS: Readonly<Record<string, Asset>> = {
  "/admin/": { body: adminHtml, type: HTML },
  "/admin/assets/admin.js": { body: adminJs, type: JS },
  "/admin/assets/page.css": { body: pageCss, type: CSS },
};

function serve(app: Hono<AppEnv>, assets: Readonly<Record<string, Asset>>) {
  for (const [path, asset] of Object.entries(assets)) {
    app.get(path, (c) => answer(c, asset));
  }
}

function answer(c: Context<AppEnv>, asset: Asset): Response {
  return c.body(asset.body, 200, {
    "Content-Type": asset.type,
    // Small and embedded: revalidating costs nothing, and a new version
    // shows at once.
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
  });
}

/**
 * Adds the client page: `/`, `/assets/client.js`, `/assets/page.css`.
 *
 * @param app The app serving the WebSocket upgrade.
 */
export function clientPageRoutes(app: Hono<AppEnv>): void {
  serve(app, CLIENT_ASSETS);
}

/**
 * Adds the operator page: `/admin/` and its assets, and `/admin` redirecting
 * there. Register it before the admin API's bearer-token middleware: the page
 * holds no data and must load so it can ask for the token.
 *
 * @param app The app serving the admin API.
 * @param rootRedirect Also redirect `/` to `/admin/` (the admin port, where
 *   no client page is served).
 */
export function adminPageRoutes(
  app: Hono<AppEnv>,
  rootRedirect: boolean,
): void {
  app.get("/admin", (c) => c.redirect("/admin/", 308));
  if (rootRedirect) app.get("/", (c) => c.redirect("/admin/", 302));
  serve(app, ADMIN_ASSETS);
}
