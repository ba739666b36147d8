// sockeye's operator page. The page itself holds no data: every figure comes
// from the admin API with the token from this tab's sessionStorage in an
// Authorization header. The live figures stream from /admin/events through
// fetch() (EventSource cannot send that header), so the token never appears
// in an address that a proxy or access log would keep.
const TOKEN_KEY = "sockeye.admin.token";
const POINTS = 300;
const MIN_SPAN = 30;
const RETRY_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const ui = {
  color: $("color"),
  state: $("state"),
  login: $("login"),
  refused: $("refused"),
  token: $("token"),
  dash: $("dash"),
  version: $("version"),
  stateText: $("state-text"),
  uptime: $("uptime"),
  store: $("store"),
  health: $("health"),
  updated: $("updated"),
  active: $("active"),
  connects: $("connects"),
  messages: $("messages"),
  latency: $("latency"),
  errors: $("errors"),
  connections: $("connections"),
  connTotal: $("conn-total"),
  level: $("level"),
  levelNote: $("level-note"),
  profile: $("profile"),
  forget: $("forget"),
  message: $("message"),
};

class Refused extends Error {}

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let following = null;
let listing = false;
const series = { active: [], connects: [], messages: [], p50: [], p99: [] };

function setState(state, text) {
  ui.state.dataset.state = state;
  ui.state.textContent = text;
}

function say(text) {
  ui.message.textContent = text;
}

/** Calls the admin API (paths relative to this page); 401 throws Refused. */
async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  if (token) headers.set("Authorization", "Bearer " + token);
  const res = await fetch(path, { ...init, headers, cache: "no-store" });
  if (res.status === 401) {
    await res.body?.cancel();
    throw new Refused("Refused (401): this instance needs its ADMIN_TOKEN");
  }
  if (!res.ok) {
    let message = res.status + " " + res.statusText;
    try {
      message = (await res.json()).message || message;
    } catch {
      // Not JSON: the status says enough.
    }
    throw new Error(message);
  }
  return res;
}

function refused(error) {
  following?.abort();
  following = null;
  ui.dash.hidden = true;
  ui.login.hidden = false;
  ui.refused.textContent = error.message +
    (token ? " (the token given was not accepted)" : "");
  setState("error", "refused · 401");
  ui.token.focus();
}

function fail(error) {
  if (error instanceof Refused) refused(error);
  else say(error.message);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function rate(n) {
  return n === null ? "–" : n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

function ms(seconds) {
  const v = seconds * 1000;
  return v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2);
}

function push(list, value) {
  list.push(value);
  if (list.length > POINTS) list.shift();
}

/**
 * Draws one or two series as polylines, newest at the right, scaled to the
 * larger maximum; the time axis spans at least MIN_SPAN points so a young
 * chart is readable, and grows to POINTS.
 */
function draw(id, ...lines) {
  const svg = $(id);
  const max = Math.max(1e-9, ...lines.flat().filter((v) => v !== null)) * 1.15;
  const span = Math.max(MIN_SPAN, ...lines.map((l) => l.length));
  const step = 300 / (span - 1);
  svg.replaceChildren();
  lines.forEach((values, i) => {
    const points = [];
    const offset = span - values.length;
    values.forEach((v, x) => {
      if (v === null) return;
      const y = 60 - (v / max) * 58;
      points.push(((offset + x) * step).toFixed(1) + "," + y.toFixed(1));
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    if (i > 0) line.setAttribute("class", "second");
    svg.append(line);
  });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function emptyRow(body, columns, text) {
  const tr = document.createElement("tr");
  const td = cell(text, "muted");
  td.colSpan = columns;
  tr.append(td);
  body.replaceChildren(tr);
}

function show(snapshot) {
  document.documentElement.style.setProperty(
    "--color",
    snapshot.color === "green"
      ? "#1a7f37"
      : snapshot.color === "blue"
      ? "#1f6feb"
      : "#6e40c9",
  );
  ui.color.textContent = snapshot.color;
  setState(snapshot.state, snapshot.state);
  ui.version.textContent = snapshot.version;
  ui.stateText.textContent = snapshot.state;
  ui.uptime.textContent = duration(snapshot.uptime_seconds);
  ui.store.textContent = snapshot.store.kind +
    (snapshot.store.up ? " · up" : " · down");
  const faults = Object.entries(snapshot.faults).map(([k, v]) => k + ": " + v);
  ui.health.textContent = snapshot.store.up && faults.length === 0
    ? "ok"
    : [snapshot.store.up ? "" : "store down", ...faults].filter(Boolean).join(
      "; ",
    );
  ui.updated.textContent = snapshot.time.slice(11, 19) + " UTC";
  ui.active.textContent = String(snapshot.active_connections);
  ui.connects.textContent = rate(snapshot.connects_per_second);
  ui.messages.textContent = rate(snapshot.messages_per_second);
  const latency = snapshot.latency_seconds;
  ui.latency.textContent = latency
    ? ms(latency.p50) + " / " + ms(latency.p99)
    : "–";
  push(series.active, snapshot.active_connections);
  push(series.connects, snapshot.connects_per_second);
  push(series.messages, snapshot.messages_per_second);
  push(series.p50, latency ? latency.p50 * 1000 : null);
  push(series.p99, latency ? latency.p99 * 1000 : null);
  draw("chart-active", series.active);
  draw("chart-connects", series.connects);
  draw("chart-messages", series.messages);
  draw("chart-latency", series.p50, series.p99);
  const types = Object.keys(snapshot.errors_total).sort();
  if (types.length === 0) emptyRow(ui.errors, 3, "none");
  else {
    ui.errors.replaceChildren(...types.map((type) => {
      const tr = document.createElement("tr");
      tr.append(
        cell(type),
        cell(String(snapshot.errors_total[type]), "num"),
        cell(rate(snapshot.errors_per_second[type] || 0), "num"),
      );
      return tr;
    }));
  }
  listConnections();
}

async function listConnections() {
  if (listing) return;
  listing = true;
  try {
    const page = await (await api("connections?limit=100")).json();
    ui.connTotal.textContent = page.total > page.connections.length
      ? "(first " + page.connections.length + " of " + page.total + ")"
      : "(" + page.total + ")";
    if (page.connections.length === 0) {
      return emptyRow(ui.connections, 6, "none");
    }
    const now = Date.now();
    ui.connections.replaceChildren(...page.connections.map((conn) => {
      const tr = document.createElement("tr");
      tr.dataset.session = conn.session_id;
      const session = cell("");
      const code = document.createElement("code");
      code.textContent = conn.session_id;
      session.append(code);
      const action = cell("");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "danger";
      button.dataset.id = conn.connection_id;
      button.textContent = "Disconnect";
      button.setAttribute(
        "aria-label",
        "Disconnect session " + conn.session_id,
      );
      action.append(button);
      tr.append(
        session,
        cell(conn.remote_addr),
        cell(
          duration(Math.max(0, (now - Date.parse(conn.connected_at)) / 1000)),
        ),
        cell(String(conn.messages), "num"),
        cell(String(conn.buffered_bytes), "num"),
        action,
      );
      return tr;
    }));
  } catch (error) {
    fail(error);
  } finally {
    listing = false;
  }
}

/** Follows /admin/events (text/event-stream) until it ends or fails, then retries. */
async function follow() {
  const control = new AbortController();
  following = control;
  let ended = "";
  try {
    const res = await api("events", { signal: control.signal });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const type = /^event: (.*)$/m.exec(block)?.[1] || "message";
        const data = block.split("\n").filter((l) => l.startsWith("data: "))
          .map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        const parsed = JSON.parse(data);
        if (type === "end") ended = parsed.state;
        else show(parsed);
      }
    }
  } catch (error) {
    if (control.signal.aborted) return;
    if (error instanceof Refused) return refused(error);
    say("Event stream lost: " + error.message);
  }
  if (following !== control) return;
  // The drain ended the stream: say so, and look for the next process.
  if (ended) {
    ui.stateText.textContent = ended;
    setState(ended, ended + " · stream ended, retrying");
  } else setState("error", "not connected · retrying");
  setTimeout(() => following === control && follow(), RETRY_MS);
}

async function showLevel(res) {
  const state = await res.json();
  ui.level.value = state.level;
  ui.levelNote.textContent = state.reverts_to
    ? "reverts to " + state.reverts_to + " at " + state.reverts_at
    : "";
}

async function start() {
  try {
    await showLevel(await api("log-level"));
  } catch (error) {
    return fail(error);
  }
  ui.login.hidden = true;
  ui.dash.hidden = false;
  follow();
}

ui.login.addEventListener("submit", (event) => {
  event.preventDefault();
  token = ui.token.value.trim();
  ui.token.value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});

ui.forget.addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = "";
  following?.abort();
  following = null;
  location.reload();
});

ui.controls = $("controls");
ui.controls.addEventListener("submit", (event) => event.preventDefault());

ui.level.addEventListener("change", async () => {
  try {
    await showLevel(
      await api("log-level", {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ level: ui.level.value }),
      }),
    );
    say("Log level set to " + ui.level.value + ".");
  } catch (error) {
    fail(error);
  }
});

ui.connections.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-id]");
  if (!button) return;
  button.disabled = true;
  try {
    const answer =
      await (await api("connections/" + encodeURIComponent(button.dataset.id), {
        method: "DELETE",
      })).json();
    say(
      "Closed connection " + answer.connection_id + " (session " +
        answer.session_id + ") with " + answer.close_code + ".",
    );
  } catch (error) {
    fail(error);
  }
  listConnections();
});

ui.profile.addEventListener("click", async () => {
  ui.profile.disabled = true;
  say("Recording a CPU profile for 10 s…");
  try {
    const blob = await (await api("../debug/pprof/profile?seconds=10")).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "sockeye-cpu.pb.gz";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    say(
      "CPU profile downloaded (" + blob.size +
        " bytes, gzipped pprof: go tool pprof -http=: sockeye-cpu.pb.gz).",
    );
  } catch (error) {
    fail(error);
  } finally {
    ui.profile.disabled = false;
  }
});

start();
