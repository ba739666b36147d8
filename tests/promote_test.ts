/**
 * Blue/green behind the shipped nginx config (Debian's nginx), promoted with
 * monitoring/nginx/promote.sh: WebSockets pass the proxy, and after the
 * switch a drained client reconnects to the new color and resumes its count.
 */
import assert from "node:assert/strict";
import {
  DENO,
  freePort,
  ROOT,
  spawnServer,
  startRedis,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

Deno.test("promote.sh switches the proxy to green; drained clients resume there", async () => {
  await using redis = await startRedis();
  await using blue = await spawnServer({ COLOR: "blue", REDIS_URL: redis.url });
  await using green = await spawnServer({
    COLOR: "green",
    REDIS_URL: redis.url,
  });
  const readyz = async (port: number) => {
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    await res.body?.cancel();
    return res.status === 200;
  };
  await until(() => readyz(blue.port), "blue ready");
  await until(() => readyz(green.port), "green ready");

  // The shipped nginx.conf, listening on a free loopback port, its upstream
  // file in a temporary folder pointing at blue.
  const dir = await Deno.makeTempDir({ prefix: "sockeye-nginx-" });
  const port = freePort();
  const shipped = await Deno.readTextFile(`${ROOT}monitoring/nginx/nginx.conf`);
  assert.match(shipped, /include \/etc\/nginx\/sockeye\/upstream\.conf;/);
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    shipped
      .replace("/etc/nginx/sockeye/upstream.conf", `${dir}/upstream.conf`)
      .replace("listen 80;", `listen 127.0.0.1:${port};`)
      .replace("http {", `http {\n  access_log ${dir}/access.log;`),
  );
  const upstream = await Deno.readTextFile(
    `${ROOT}monitoring/nginx/upstream.conf`,
  );
  assert.match(upstream, /server app_blue:8000;/);
  await Deno.writeTextFile(
    `${dir}/upstream.conf`,
    upstream.replace("app_blue:8000", `127.0.0.1:${blue.port}`),
  );
  const globals = `pid ${dir}/nginx.pid; error_log ${dir}/error.log;`;
  const nginx = new Deno.Command("nginx", {
    args: [
      "-p",
      dir,
      "-c",
      `${dir}/nginx.conf`,
      "-g",
      `${globals} daemon off;`,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  try {
    // The color behind the proxy, or undefined while it answers an error page.
    const proxiedColor = async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/healthz`);
        return res.ok ? (await res.json()).color : await res.body?.cancel();
      } catch {
        return undefined;
      }
    };
    await until(
      async () => await proxiedColor() === "blue",
      "the proxy serving blue",
    );

    const url = `ws://127.0.0.1:${port}/ws/chat/?session_uuid=promoted`;
    const client = await TestClient.open(url, "sockeye.v1");
    assert.match(await client.next(), /"count": 0, "resumed": false/);
    assert.equal(await client.ask("a"), '{"count": 1}');
    assert.equal(await client.ask("b"), '{"count": 2}');

    const promote = await new Deno.Command("sh", {
      args: [`${ROOT}monitoring/nginx/promote.sh`, "green"],
      env: {
        UPSTREAM_FILE: `${dir}/upstream.conf`,
        GREEN_ADDR: `127.0.0.1:${green.port}`,
        READY_CMD:
          `${DENO} run -A ${ROOT}main.ts healthcheck http://127.0.0.1:${green.port}/readyz`,
        RELOAD_CMD:
          `nginx -p ${dir} -c ${dir}/nginx.conf -g '${globals}' -s reload`,
        DRAIN_CMD: `kill -TERM ${blue.child.pid}`,
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(promote.code, 0, new TextDecoder().decode(promote.stderr));
    assert.match(
      await Deno.readTextFile(`${dir}/upstream.conf`),
      new RegExp(`server 127\\.0\\.0\\.1:${green.port};`),
    );

    // Blue drains: the client gets its bye through the proxy, then 1001.
    assert.equal((await client.closed).code, 1001);
    assert.equal(client.received.at(-1), '{"bye": true, "total": 2}');
    assert.equal((await within(blue.status, "blue exits")).code, 0);

    // It reconnects through the proxy, lands on green and continues.
    await until(
      async () => await proxiedColor() === "green",
      "the proxy serving green",
    );
    await using again = await TestClient.open(url, "sockeye.v1");
    assert.match(await again.next(), /"count": 2, "resumed": true/);
    assert.equal(await again.ask("c"), '{"count": 3}');

    // Promoting a color that is not ready changes nothing.
    const refused = await new Deno.Command("sh", {
      args: [`${ROOT}monitoring/nginx/promote.sh`, "blue"],
      env: {
        UPSTREAM_FILE: `${dir}/upstream.conf`,
        READY_CMD:
          `${DENO} run -A ${ROOT}main.ts healthcheck http://127.0.0.1:${blue.port}/readyz`,
        RELOAD_CMD: "false",
        DRAIN_CMD: "false",
      },
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(refused.code, 1);
    assert.match(
      await Deno.readTextFile(`${dir}/upstream.conf`),
      new RegExp(`:${green.port};`),
    );
  } finally {
    nginx.kill("SIGTERM");
    await nginx.stderr.cancel();
    await nginx.status;
    await Deno.remove(dir, { recursive: true });
  }
});
