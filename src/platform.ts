/**
 * The only code that calls `Deno.*`, one module per concern: HTTP serving and
 * WebSocket upgrades (`platform/http.ts`), the process (`platform/process.ts`:
 * signals, environment, exit, resource facts), standard streams and files
 * (`platform/io.ts`). A port to another runtime replaces these files and
 * nothing else.
 *
 * @module
 */
export * from "./platform/http.ts";
export * from "./platform/process.ts";
export * from "./platform/io.ts";
