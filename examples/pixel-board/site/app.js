// The pixel board's page: a snapshot of the board plus the channel's
// messages after it, so the page never silently misses a placement.
//
// 1. GET /api/board: the 500,000 bytes (4 bits a pixel) and the header
//    `x-board-offset: EPOCH:OFFSET`, the channel position the bytes include.
// 2. EventSource on /v1/channels/board/events?since=EPOCH:OFFSET: every
//    `message` ({"x","y","c"}, id EPOCH:N) after it, in order. When the
//    connection drops, the browser reconnects with Last-Event-ID (the last
//    id seen) and the node replays what was missed. When it cannot (the gap
//    is older than the channel's history, or the node's epoch changed) it
//    says so with a `reset` event: the page fetches the board again and
//    follows on from the new snapshot's offset.
//
// For tests: window.boardChecksum() (CRC-32 of the board bytes, 8 hex
// digits, as GET /api/checksum), window.boardState(), window.pixelAt(x, y),
// window.placePixel(x, y, c), window.lastPlacement, and window.boardDebug
// (pause()/resume() the live stream, to make a gap on purpose).
"use strict";

(() => {
  const W = 1000;
  const H = 1000;
  const PALETTE = [
    "#ffffff", "#e4e4e4", "#888888", "#222222", "#ffa7d1", "#e50000", "#e59500", "#a06a42",
    "#e5d900", "#94e044", "#02be01", "#00d3dd", "#0083c7", "#0000ea", "#cf6ee4", "#820080",
  ];
  const RGB = PALETTE.map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));

  const $ = (id) => document.getElementById(id);
  const canvas = $("board");
  const ctx2d = canvas.getContext("2d");
  const image = ctx2d.createImageData(W, H);
  const board = new Uint8Array(W * H / 2);

  const state = {
    conn: "connecting", // connecting | live | resyncing
    epoch: null,
    offset: null,
    es: null,
    paused: false,
    snapshots: 0, // boards fetched: 1 at the start, +1 per resync
    resets: 0, // `reset` events received
    seen: 0,
    placed: 0,
    colour: 5,
    user: null,
    cooldownUntil: 0,
    cooldownLen: 0,
    retryTimer: null,
    generation: 0, // bumps on every (re)open: events of an older EventSource are ignored
  };

  // ---- the board ----

  function getPixel(x, y) {
    const i = y * W + x;
    const b = board[i >> 1];
    return i & 1 ? b & 0x0f : b >> 4;
  }

  function setPixel(x, y, c) {
    const i = y * W + x;
    const j = i >> 1;
    board[j] = i & 1 ? (board[j] & 0xf0) | c : (board[j] & 0x0f) | (c << 4);
    paint(i, c);
    scheduleDraw();
  }

  function paint(i, c) {
    const [r, g, b] = RGB[c];
    const p = i * 4;
    image.data[p] = r;
    image.data[p + 1] = g;
    image.data[p + 2] = b;
    image.data[p + 3] = 255;
  }

  function paintAll() {
    for (let j = 0; j < board.length; j++) {
      paint(2 * j, board[j] >> 4);
      paint(2 * j + 1, board[j] & 0x0f);
    }
    scheduleDraw();
  }

  let drawQueued = false;
  function scheduleDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      ctx2d.putImageData(image, 0, 0);
    });
  }

  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return ((c ^ 0xffffffff) >>> 0).toString(16).padStart(8, "0");
  }

  // ---- snapshot + stream ----

  function setConn(conn) {
    state.conn = conn;
    $("conn").dataset.state = conn;
    $("conn-text").textContent = conn;
  }

  function showOffset() {
    $("offset").textContent = state.offset === null ? "–" : String(state.offset);
    $("seen").textContent = String(state.seen);
  }

  function parsePosition(text) {
    const m = /^(.*):(\d+)$/.exec(text || ""); // a channel never published to has epoch ""
    return m ? { epoch: m[1], offset: Number(m[2]) } : null;
  }

  function closeStream() {
    state.generation++;
    if (state.es) state.es.close();
    state.es = null;
    clearTimeout(state.retryTimer);
  }

  // Fetches the board and follows the channel from the snapshot's offset;
  // retries (with backoff) until the node answers.
  async function resync(attempt = 0) {
    closeStream();
    const generation = state.generation;
    setConn(state.epoch === null ? "connecting" : "resyncing");
    try {
      const r = await fetch("/api/board", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error("GET /api/board: " + r.status);
      const position = parsePosition(r.headers.get("x-board-offset"));
      if (!position) throw new Error("GET /api/board: no x-board-offset header");
      const bytes = new Uint8Array(await r.arrayBuffer());
      if (bytes.length !== board.length) throw new Error("GET /api/board: " + bytes.length + " bytes");
      if (generation !== state.generation) return; // another resync took over
      board.set(bytes);
      paintAll();
      state.epoch = position.epoch;
      state.offset = position.offset;
      state.snapshots++;
      showOffset();
      open();
    } catch (e) {
      if (generation !== state.generation) return;
      setConn("connecting");
      state.retryTimer = setTimeout(() => resync(attempt + 1), Math.min(250 * 2 ** attempt, 3000));
    }
  }

  function open() {
    closeStream();
    if (state.paused) return;
    const generation = state.generation;
    const since = encodeURIComponent(state.epoch + ":" + state.offset);
    const es = new EventSource("/v1/channels/board/events?since=" + since);
    state.es = es;
    const mine = (f) => (e) => { if (generation === state.generation) f(e); };

    es.addEventListener("ready", mine((e) => {
      const d = JSON.parse(e.data);
      if (d.epoch !== state.epoch) return void resync(); // never trust bytes of another epoch
      setConn("live");
    }));
    es.addEventListener("message", mine((e) => {
      const id = parsePosition(e.lastEventId);
      if (!id || id.epoch !== state.epoch) return void resync();
      if (id.offset <= state.offset) return; // already in the snapshot
      const m = JSON.parse(e.data);
      if (validPixel(m)) setPixel(m.x, m.y, m.c);
      state.offset = id.offset;
      state.seen++;
      showOffset();
    }));
    es.addEventListener("reset", mine(() => {
      state.resets++;
      resync();
    }));
    es.onerror = mine(() => {
      // CONNECTING: the browser retries by itself, with Last-Event-ID.
      // CLOSED (an HTTP error answer, e.g. while the node restarts): it
      // gives up, so reopen from where this page is.
      setConn("connecting");
      if (es.readyState === EventSource.CLOSED) {
        state.retryTimer = setTimeout(mine(open), 1000);
      }
    });
  }

  function validPixel(m) {
    return m && Number.isInteger(m.x) && Number.isInteger(m.y) && Number.isInteger(m.c) &&
      m.x >= 0 && m.x < W && m.y >= 0 && m.y < H && m.c >= 0 && m.c < 16;
  }

  // ---- placing pixels ----

  async function placePixel(x, y, c) {
    let status = 0;
    let body = null;
    try {
      const r = await fetch("/api/pixel", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ x, y, c }),
      });
      status = r.status;
      body = await r.json().catch(() => null);
    } catch (e) {
      body = { error: { message: String(e) } };
    }
    const result = { x, y, c, status, body };
    window.lastPlacement = result;
    if (status === 200) {
      state.placed++;
      $("placed").textContent = String(state.placed);
      startCooldown(body.cooldown_s || 0, body.cooldown_s || 0);
    } else if (status === 429) {
      const left = (body && body.retry_after_s) || 1;
      startCooldown(left, Math.max(left, state.cooldownLen));
      toast("Cooldown: wait " + left.toFixed(1) + " s", true);
    } else if (status === 401) {
      toast("Log in first (top right)", true);
      $("name").focus();
    } else {
      toast((body && body.error && body.error.message) || "could not place the pixel (" + status + ")", true);
    }
    return result;
  }

  function startCooldown(seconds, length) {
    state.cooldownUntil = Date.now() + seconds * 1000;
    state.cooldownLen = length;
    tickCooldown();
  }

  function tickCooldown() {
    const left = Math.max(0, state.cooldownUntil - Date.now()) / 1000;
    const bar = $("cooldown-bar");
    bar.style.width = left > 0 && state.cooldownLen > 0 ? (100 * (1 - left / state.cooldownLen)) + "%" : "100%";
    bar.classList.toggle("waiting", left > 0);
    $("cooldown-text").textContent = left > 0 ? left.toFixed(1) + " s" : "ready";
  }
  setInterval(tickCooldown, 100);

  let toastTimer = null;
  function toast(text, bad) {
    const t = $("toast");
    t.textContent = text;
    t.classList.toggle("bad", !!bad);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 2500);
  }

  // ---- login ----

  function showUser(name) {
    state.user = name;
    $("login").hidden = !!name;
    $("who").hidden = !name;
    $("who-name").textContent = name || "";
  }

  $("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("name").value.trim();
    const r = await fetch("/api/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    }).catch(() => null);
    const body = r ? await r.json().catch(() => null) : null;
    if (r && r.ok) showUser(body.name);
    else toast((body && body.error && body.error.message) || "login failed", true);
  });

  fetch("/api/me", { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.json() : null))
    .then((me) => {
      if (!me) return;
      if (me.name) showUser(me.name);
      if (me.wait_s > 0) startCooldown(me.wait_s, me.cooldown_s);
    })
    .catch(() => {});

  // ---- palette ----

  const palette = $("palette");
  PALETTE.forEach((hex, c) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "swatch";
    b.style.background = hex;
    b.title = "colour " + c;
    b.dataset.colour = String(c);
    b.setAttribute("role", "radio");
    b.addEventListener("click", () => selectColour(c));
    palette.appendChild(b);
  });
  function selectColour(c) {
    state.colour = c;
    for (const b of palette.children) b.setAttribute("aria-checked", String(Number(b.dataset.colour) === c));
  }
  selectColour(state.colour);

  // ---- view: fit, zoom, pan, click ----

  const viewport = $("viewport");
  const view = { scale: 1, tx: 0, ty: 0 };

  function applyView() {
    canvas.style.transform = `translate(${view.tx}px, ${view.ty}px) scale(${view.scale})`;
  }

  function fit() {
    const r = viewport.getBoundingClientRect();
    view.scale = Math.max(0.05, Math.min(r.width, r.height) * 0.94 / W);
    view.tx = (r.width - W * view.scale) / 2;
    view.ty = (r.height - H * view.scale) / 2;
    applyView();
  }

  function zoomAt(factor, cx, cy) {
    const s = Math.min(40, Math.max(0.2, view.scale * factor));
    view.tx = cx - (cx - view.tx) * (s / view.scale);
    view.ty = cy - (cy - view.ty) * (s / view.scale);
    view.scale = s;
    applyView();
  }

  function boardXY(clientX, clientY) {
    const r = canvas.getBoundingClientRect();
    const x = Math.floor((clientX - r.left) / r.width * W);
    const y = Math.floor((clientY - r.top) / r.height * H);
    return x >= 0 && x < W && y >= 0 && y < H ? { x, y } : null;
  }

  viewport.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = viewport.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });

  let drag = null;
  viewport.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
  });
  window.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
      if (drag.moved) {
        view.tx = drag.tx + dx;
        view.ty = drag.ty + dy;
        applyView();
      }
    }
    hover(e.clientX, e.clientY);
  });
  window.addEventListener("pointerup", (e) => {
    const d = drag;
    drag = null;
    if (!d || d.moved || e.target !== canvas) return;
    const p = boardXY(e.clientX, e.clientY);
    if (!p) return;
    if (Date.now() < state.cooldownUntil) {
      toast("Cooldown: " + ((state.cooldownUntil - Date.now()) / 1000).toFixed(1) + " s left", true);
      return;
    }
    placePixel(p.x, p.y, state.colour);
  });

  function hover(clientX, clientY) {
    const p = boardXY(clientX, clientY);
    const ret = $("reticle");
    if (!p) {
      ret.hidden = true;
      $("coords").textContent = "–";
      return;
    }
    $("coords").textContent = p.x + ", " + p.y;
    const r = canvas.getBoundingClientRect();
    const v = viewport.getBoundingClientRect();
    const size = r.width / W;
    ret.hidden = false;
    ret.style.left = (r.left - v.left + p.x * size - 2) + "px";
    ret.style.top = (r.top - v.top + p.y * size - 2) + "px";
    ret.style.width = (size + 4) + "px";
    ret.style.height = (size + 4) + "px";
    ret.style.background = PALETTE[state.colour];
  }

  $("zoom-in").addEventListener("click", () => {
    const r = viewport.getBoundingClientRect();
    zoomAt(1.5, r.width / 2, r.height / 2);
  });
  $("zoom-out").addEventListener("click", () => {
    const r = viewport.getBoundingClientRect();
    zoomAt(1 / 1.5, r.width / 2, r.height / 2);
  });
  $("zoom-fit").addEventListener("click", fit);
  window.addEventListener("resize", fit);

  // ---- for tests and the curious ----

  window.boardChecksum = () => crc32(board);
  window.boardState = () => ({
    connected: state.conn === "live",
    state: state.conn,
    epoch: state.epoch,
    offset: state.offset,
    snapshots: state.snapshots,
    resets: state.resets,
    seen: state.seen,
    placed: state.placed,
    user: state.user,
  });
  window.pixelAt = (x, y) => getPixel(x, y);
  window.placePixel = placePixel;
  window.selectColour = selectColour;
  window.lastPlacement = null;
  window.boardDebug = {
    // Stops following the channel (as a dropped connection would), and
    // follows on from the same offset: the node replays the gap, or resets.
    pause() { state.paused = true; closeStream(); setConn("connecting"); },
    resume() { state.paused = false; open(); },
  };

  paintAll();
  fit();
  resync();
})();
