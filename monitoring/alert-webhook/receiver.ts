/**
 * A minimal Alertmanager webhook receiver for the compose stack: each alert
 * of each notification (Alertmanager's webhook payload, version 4) becomes
 * one JSON line on stdout, so `docker compose logs alert-webhook` shows what
 * would have paged. Real paging goes in alertmanager.yml (Slack, e-mail,
 * PagerDuty …); this keeps the shipped routes pointing at something that
 * answers.
 *
 *   deno run --allow-net --allow-env=PORT receiver.ts    # PORT, default 5001
 *
 * @module
 */

/** The part of Alertmanager's webhook payload this receiver reads. */
interface Notification {
  readonly receiver?: string;
  readonly status?: string;
  readonly alerts?: ReadonlyArray<{
    readonly status?: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly annotations?: Readonly<Record<string, string>>;
    readonly startsAt?: string;
    readonly endsAt?: string;
  }>;
}

const encoder = new TextEncoder();

function line(fields: Record<string, unknown>): void {
  const bytes = encoder.encode(JSON.stringify(fields) + "\n");
  let off = 0;
  while (off < bytes.length) off += Deno.stdout.writeSync(bytes.subarray(off));
}

const port = Number(Deno.env.get("PORT") ?? "5001");

Deno.serve({ port, onListen() {} }, async (req) => {
  const path = new URL(req.url).pathname;
  if (req.method !== "POST" || !path.startsWith("/alerts")) {
    return new Response("not found\n", { status: 404 });
  }
  let body: Notification;
  try {
    body = await req.json();
  } catch {
    return new Response("expected Alertmanager's JSON payload\n", {
      status: 400,
    });
  }
  for (const alert of body.alerts ?? []) {
    const labels = alert.labels ?? {};
    const firing = alert.status === "firing";
    line({
      timestamp: new Date().toISOString(),
      level: firing
        ? labels.severity === "critical" ? "error" : "warning"
        : "info",
      logger: "alert-webhook",
      message: `Alert ${firing ? "firing" : "resolved"}: ${
        labels.alertname ?? "unnamed"
      }`,
      path,
      receiver: body.receiver,
      status: alert.status,
      labels,
      summary: alert.annotations?.summary,
      runbook_url: alert.annotations?.runbook_url,
      starts_at: alert.startsAt,
      ends_at: alert.endsAt,
    });
  }
  return new Response(null, { status: 200 });
});
