// sockeye's client page: the protocol in a page. Plain browser JavaScript,
// served as its own file so the page's Content-Security-Policy allows no
// inline script.
const SUBPROTOCOL = "sockeye.v1";
const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_LOG = 500;
const CLOSE_MEANINGS = {
  1000: "normal closure",
  1001: "going away: the server is draining or the client was idle",
  1003: "unsupported data: binary frame",
  1006: "abnormal closure: no close frame",
  1008: "policy violation: rate limit, slow reader or token expired",
  1009: "message too big",
  1011: "internal error",
  4001: "disconnected by an operator",
};

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  connect: $("connect"),
  session: $("session"),
  subprotocol: $("subprotocol"),
  open: $("open"),
  close: $("close"),
  sessionId: $("session-id"),
  count: $("count"),
  framesIn: $("frames-in"),
  heartbeats: $("heartbeats"),
  share: $("share"),
  note: $("note"),
  send: $("send"),
  message: $("message"),
  sendButton: $("send-button"),
  log: $("log"),
};

let socket = null;
let framesIn = 0;
let heartbeats = 0;

function setState(state, text) {
  ui.state.dataset.state = state;
  ui.state.textContent = text;
}

function setConnected(connected) {
  ui.open.disabled = connected;
  ui.session.disabled = connected;
  ui.subprotocol.disabled = connected;
  ui.close.disabled = !connected;
  ui.message.disabled = !connected;
  ui.sendButton.disabled = !connected;
}

function note(text) {
  ui.note.hidden = !text;
  ui.note.textContent = text || "";
}

function clock() {
  return new Date().toISOString().slice(11, 23);
}

function addLog(direction, kind, text) {
  const item = document.createElement("li");
  item.dataset.kind = kind;
  for (
    const [cls, value] of [["time", clock()], ["dir", direction], [
      "kind",
      kind,
    ], ["text", text]]
  ) {
    const cell = document.createElement(cls === "text" ? "code" : "span");
    cell.className = cls;
    cell.textContent = value;
    item.append(cell);
  }
  ui.log.append(item);
  while (ui.log.childElementCount > MAX_LOG) ui.log.firstElementChild.remove();
  ui.log.scrollTop = ui.log.scrollHeight;
}

/** The share link and the address bar name the session, so a reload resumes it. */
function showSession(id) {
  ui.sessionId.textContent = id;
  ui.session.value = id;
  const link = new URL(location.href);
  link.search = "";
  link.hash = "";
  link.searchParams.set("session_uuid", id);
  ui.share.href = link.href;
  ui.share.textContent = link.pathname + link.search;
  history.replaceState(null, "", link.href);
}

/** The WebSocket URL next to this page, ws: or wss: as the page was loaded. */
function socketUrl(id) {
  const url = new URL("ws/chat/", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  if (id) url.searchParams.set("session_uuid", id);
  return url.href;
}

function kindOf(frame) {
  if (frame === null || typeof frame !== "object") return "other";
  if (frame.type === "session") return "session";
  if ("count" in frame) return "count";
  if ("ts" in frame) return "heartbeat";
  if ("bye" in frame) return "bye";
  return "other";
}

function onFrame(event) {
  if (typeof event.data !== "string") {
    addLog("←", "binary", "(binary frame)");
    return;
  }
  framesIn++;
  ui.framesIn.textContent = String(framesIn);
  let frame = null;
  try {
    frame = JSON.parse(event.data);
  } catch {
    // Shown as it came.
  }
  const kind = kindOf(frame);
  addLog("←", kind, event.data);
  if (kind === "session") {
    showSession(frame.session_uuid);
    ui.count.textContent = String(frame.count);
    note(
      frame.resumed
        ? "Resumed: the count continues from " + frame.count + "."
        : "A new session.",
    );
  } else if (kind === "count") {
    ui.count.textContent = String(frame.count);
  } else if (kind === "heartbeat") {
    heartbeats++;
    ui.heartbeats.textContent = String(heartbeats);
  } else if (kind === "bye") {
    ui.count.textContent = String(frame.total);
  }
}

function connect() {
  if (socket) return;
  const id = ui.session.value.trim();
  if (id && !SESSION_ID.test(id)) {
    setState("error", "invalid session id");
    note("A session id is 1 to 64 characters from A-Z, a-z, 0-9, _ and -.");
    ui.session.focus();
    return;
  }
  const protocols = ui.subprotocol.checked ? [SUBPROTOCOL] : [];
  const url = socketUrl(id);
  setState("connecting", "connecting…");
  setConnected(true);
  ui.open.disabled = true;
  addLog("→", "open", url + (protocols.length ? " (" + SUBPROTOCOL + ")" : ""));
  const ws = new WebSocket(url, protocols);
  socket = ws;
  ws.addEventListener("open", () => {
    setState("open", ws.protocol ? "open · " + ws.protocol : "open");
    if (!ws.protocol) {
      if (id) showSession(id);
      note(
        "Without " + SUBPROTOCOL +
          " the server names the session only in the " +
          "X-Session-UUID header of its 101 answer, which a browser cannot read" +
          (id ? "." : ": turn it on, or give an id, to know the session."),
      );
    }
    ui.message.focus();
  });
  ws.addEventListener("message", onFrame);
  ws.addEventListener("close", (event) => {
    socket = null;
    const meaning = CLOSE_MEANINGS[event.code] || "";
    const text = event.code + (event.reason ? " " + event.reason : "") +
      (meaning ? " (" + meaning + ")" : "");
    addLog("←", "close", text);
    setState(
      "closed",
      "closed · " + event.code + (event.reason ? " " + event.reason : ""),
    );
    setConnected(false);
    ui.open.textContent = "Reconnect";
    ui.open.focus();
  });
}

ui.connect.addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
ui.close.addEventListener(
  "click",
  () => socket?.close(1000, "closed by the page"),
);
ui.send.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.message.value;
  if (!socket || socket.readyState !== WebSocket.OPEN || text === "") return;
  socket.send(text);
  addLog("→", "text", text);
  ui.message.value = "";
});

// A shared link names its session: open it at once.
const shared = new URLSearchParams(location.search).get("session_uuid");
if (shared) {
  ui.session.value = shared;
  connect();
} else {
  ui.session.focus();
}
