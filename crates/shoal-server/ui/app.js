// Shoal's dashboard: one ES module, no build step (docs/dashboard.md).
//
// Every call goes to this node's API with the token the user signed in
// with (kept in sessionStorage: this tab only), as `Authorization: Bearer`;
// live updates come from the node's feeds over Server-Sent Events with the
// token in `?token=` (EventSource cannot set headers). Views are routed by
// the URL's hash (#/functions/hello) and each returns a cleanup that closes
// its streams and timers. Text from the node is put in the page as text
// nodes only (never as HTML).
//
// `window.dash` exposes the page's state to the browser test
// (crates/shoal/tests/fixtures/dashboard_browser.py).

const TOKEN_KEY = "shoal.token";
const dash = (window.dash = { view: null, ready: false, renders: 0, load: Math.random().toString(36).slice(2), charts: {}, live: {}, last: {} });

// ---------- DOM ----------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  add(el, ...children);
  return el;
}

function add(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fill(el, ...children) {
  el.replaceChildren();
  return add(el, ...children);
}

const $ = (sel, root = document) => root.querySelector(sel);

function status(s) {
  return h("span", { class: "status " + (s || "") }, s || "—");
}

function when(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function ago(ms) {
  if (!ms) return "—";
  const s = Math.round((Date.now() - ms) / 1000);
  if (Math.abs(s) < 60) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 60) return m >= 0 ? `${m}m ago` : `in ${-m}m`;
  const hr = Math.round(m / 60);
  return hr >= 0 ? `${hr}h ago` : `in ${-hr}h`;
}

function dur(ms) {
  if (ms == null) return "—";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

// 90000 → "1m 30s", 3600000 → "1h".
function span(ms) {
  if (ms == null) return "—";
  if (ms < 1000) return `${ms}ms`;
  const parts = [];
  let s = Math.round(ms / 1000);
  for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (s >= n) { parts.push(`${Math.floor(s / n)}${unit}`); s %= n; }
  }
  return parts.join(" ");
}

function bytes(n) {
  if (n == null) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function num(n, digits = 0) {
  if (n == null || Number.isNaN(n)) return "—";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function json(v) {
  return JSON.stringify(v, null, 2);
}

function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "note" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: /^(#|count|invocations|waiting|in flight|dead|failed|gb-s|cost|attempts|duration|running|workers|load|size|done)$/i.test(x) ? "num" : null }, x)))),
    h("tbody", {}, rows));
}

function errorBox(e) {
  return h("p", { class: "error" }, e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e.message || e));
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// A call to the API: JSON in and out (or `raw` bytes with their type).
async function api(method, path, body, opts = {}) {
  const headers = { authorization: "Bearer " + token() };
  let payload;
  if (opts.raw) {
    headers["content-type"] = opts.type;
    payload = body;
  } else if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body: payload });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (opts.full) return { status: r.status, headers: r.headers, data };
  if (!r.ok) {
    const err = data && data.error ? data.error : { code: "http_" + r.status, message: typeof data === "string" ? data : r.statusText };
    if (r.status === 401) signOut("The token was refused: " + err.message);
    throw new ApiError(r.status, err.code, err.message);
  }
  return data;
}

// A route the node does not have yet answers 404 route_not_found or 405.
function missing(e) {
  return e instanceof ApiError && ((e.status === 404 && e.code === "route_not_found") || e.status === 405);
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "" && v !== false) p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
}

// Follows a feed of the node (`_queues.jobs`, `_invocations.hello`, `_events`):
// calls `onMessage` with each message's JSON. The browser reconnects by
// itself and resumes from the last id it saw.
function feed(name, onMessage, onState) {
  const es = new EventSource(`/v1/channels/${encodeURIComponent(name)}/events?token=${encodeURIComponent(token())}`);
  dash.live[name] = false;
  es.addEventListener("ready", () => { dash.live[name] = true; onState && onState(true); });
  es.addEventListener("message", (ev) => {
    let data;
    try { data = JSON.parse(ev.data); } catch { return; }
    onMessage(data);
  });
  es.addEventListener("reset", () => onState && onState(true, "reset"));
  es.onerror = () => { dash.live[name] = false; onState && onState(false); };
  return () => { es.close(); delete dash.live[name]; };
}

function liveDot() {
  const dot = h("span", { class: "live-dot", title: "live" });
  return { el: dot, set: (on) => dot.classList.toggle("on", !!on) };
}

// ---------- cursor paging ----------

// A list a page at a time: `load(cursor)` answers {rows, next}; the pager
// keeps the cursors of the pages before for "Previous".
function pager(load, render) {
  const box = h("div", {});
  const stack = [];
  let cursor = null;
  async function show() {
    let page;
    try {
      page = await load(cursor);
    } catch (e) {
      fill(box, errorBox(e));
      return;
    }
    const prev = h("button", { class: "secondary", disabled: !stack.length, onclick: () => { cursor = stack.pop(); show(); } }, "← Previous");
    const next = h("button", { class: "secondary", "data-next": "1", disabled: !page.next, onclick: () => { stack.push(cursor); cursor = page.next; show(); } }, "Next →");
    fill(box, render(page), h("div", { class: "pager" }, prev, next, h("span", { class: "note" }, page.note || "")));
  }
  const loaded = show();
  return { el: box, loaded, reload: () => show(), first: () => { stack.length = 0; cursor = null; return show(); } };
}

// ---------- charts ----------

function chart(el, name, series, data, opts = {}) {
  if (!window.uPlot) return null;
  const width = Math.max(320, el.clientWidth || 600);
  const u = new uPlot({
    width, height: opts.height || 220,
    scales: { x: { time: true } },
    axes: [{}, { size: 60 }],
    // Gaps (minutes without a finished invocation) are bridged; points show
    // where the data is sparse.
    series: [{}, ...series.map((s, i) => ({ label: s, stroke: ["#1f6feb", "#cf222e", "#9a6700", "#1a7f37"][i % 4], width: 2, spanGaps: true,
      points: { show: (u, si) => u.data[si].filter((v) => v != null).length < 30, size: 5 } }))],
  }, data, el);
  dash.charts[name] = { data, u };
  return u;
}

function setChart(name, data) {
  const c = dash.charts[name];
  if (!c) return;
  c.data = data;
  c.u.setData(data);
}

// ---------- tar (ustar) ----------

// A ustar archive of `files` ([{path, bytes}]), as the deploy API takes it.
export function tar(files) {
  const enc = new TextEncoder();
  const blocks = [];
  for (const f of files) {
    const data = f.bytes instanceof Uint8Array ? f.bytes : enc.encode(f.text ?? "");
    const header = new Uint8Array(512);
    let name = enc.encode(f.path);
    let prefix = new Uint8Array(0);
    if (name.length > 100) {
      const cut = f.path.lastIndexOf("/", 155);
      if (cut <= 0) throw new Error(`path too long for a tar archive: ${f.path}`);
      prefix = enc.encode(f.path.slice(0, cut));
      name = enc.encode(f.path.slice(cut + 1));
      if (name.length > 100 || prefix.length > 155) throw new Error(`path too long for a tar archive: ${f.path}`);
    }
    const put = (bytesOrString, at, len) => {
      const b = typeof bytesOrString === "string" ? enc.encode(bytesOrString) : bytesOrString;
      header.set(b.subarray(0, len), at);
    };
    const octal = (n, len) => n.toString(8).padStart(len - 1, "0") + "\0";
    put(name, 0, 100);
    put(octal(0o644, 8), 100, 8);
    put(octal(0, 8), 108, 8);
    put(octal(0, 8), 116, 8);
    put(octal(data.length, 12), 124, 12);
    put(octal(0, 12), 136, 12);
    put("        ", 148, 8);
    put("0", 156, 1);
    put("ustar\0", 257, 6);
    put("00", 263, 2);
    put(prefix, 345, 155);
    let sum = 0;
    for (const b of header) sum += b;
    put(sum.toString(8).padStart(6, "0") + "\0 ", 148, 8);
    blocks.push(header, data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) blocks.push(new Uint8Array(pad));
  }
  blocks.push(new Uint8Array(1024));
  const out = new Uint8Array(blocks.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of blocks) { out.set(b, at); at += b.length; }
  return out;
}

// ---------- sign in, routing ----------

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(why);
}

function showSignIn(why) {
  cleanup();
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = why || "";
  $("#signin-token").focus();
}

async function signIn(secret) {
  sessionStorage.setItem(TOKEN_KEY, secret);
  try {
    // Any reader may list functions: a token the node refuses fails here.
    await api("GET", "/v1/functions");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(e.status === 403 ? "This token may not read the node's state: " + e.message : "Sign-in failed: " + e.message);
    return;
  }
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#whoami").textContent = "token " + secret.slice(0, 10) + "…";
  route();
}

let current = null; // cleanup of the view shown

function cleanup() {
  if (current) {
    try { current(); } catch { /* a view's cleanup failing must not stop the next one */ }
    current = null;
  }
  dash.charts = {};
}

const views = {};

async function route() {
  if (!token()) return showSignIn();
  cleanup();
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [path, query] = hash.split("?");
  const parts = path.split("/").map(decodeURIComponent);
  const name = views[parts[0]] ? parts[0] : "overview";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  const main = $("#main");
  fill(main);
  dash.view = name;
  dash.ready = false;
  const cleanups = [];
  current = () => cleanups.forEach((f) => f());
  const ctx = { params: parts.slice(1), query: new URLSearchParams(query || ""), on: (f) => cleanups.push(f) };
  try {
    await views[name](main, ctx);
  } catch (e) {
    add(main, errorBox(e));
  }
  dash.ready = true;
  dash.renders++;
  // The first view's render, from the navigation's start (the bench).
  if (!dash.firstReadyMs) dash.firstReadyMs = performance.now();
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---------- overview ----------

views.overview = async (main, ctx) => {
  add(main, h("h1", {}, "Overview"));
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const charts = h("div", { class: "row" },
    h("div", { class: "panel" }, h("h2", {}, "Invocations and errors per minute, last hour"), h("div", { class: "chart", id: "chart-rate" })),
    h("div", { class: "panel" }, h("h2", {}, "Duration p50 / p99 (ms) per minute"), h("div", { class: "chart", id: "chart-duration" })));
  const dot = liveDot();
  const recent = h("tbody", { id: "overview-live" });
  const source = h("p", { class: "note" });
  add(main, cards, charts,
    h("div", { class: "panel" }, h("h2", {}, dot.el, "Finishing now"),
      h("table", {}, h("thead", {}, h("tr", {}, ["invocation", "function", "status", "duration", "finished"].map((x) => h("th", {}, x)))), recent)),
    source);

  const [functions, node] = await Promise.all([api("GET", "/v1/functions"), api("GET", "/v1/stats").catch(() => null)]);
  const memory = Object.fromEntries(functions.functions.map((f) => [f.name, f.memory_mb]));
  const now = Date.now();
  const hourAgo = now - 3600_000;
  const today = new Date(); today.setHours(0, 0, 0, 0);
  // The last hour's minutes (their starts), the current one last.
  const minutes = Array.from({ length: 60 }, (_, i) => Math.floor(now / 60000) * 60000 - (59 - i) * 60000);
  let m = null;

  // GET /v1/stats?since&step_s answers points once the usage part is on
  // the node (contract section 5); until then this view computes the same
  // figures from pages of GET /v1/invocations (at most 10,000 records:
  // a busier node shows a lower bound, and says so).
  const stats = await api("GET", "/v1/stats" + qs({ since: minutes[0], step_s: 60 })).catch(() => null);
  if (stats && Array.isArray(stats.points)) {
    const day = await api("GET", "/v1/stats" + qs({ since: today.getTime(), step_s: 86400 })).catch(() => null);
    // The points are the minutes that have invocations: spread on the grid.
    const at = new Map(stats.points.map((p) => [p.t_ms, p]));
    const pts = minutes.map((t) => at.get(t) || { t_ms: t, invocations: 0, failed: 0, p50_ms: null, p99_ms: null });
    const tot = stats.total || {};
    m = {
      t: minutes, count: pts.map((p) => p.invocations), failed: pts.map((p) => p.failed),
      p50: pts.map((p) => p.p50_ms), p99: pts.map((p) => p.p99_ms),
      hour: tot.invocations ?? pts.reduce((a, p) => a + p.invocations, 0),
      hourFailed: tot.failed ?? pts.reduce((a, p) => a + p.failed, 0),
      last5: stats.points.filter((p) => p.t_ms >= now - 300_000).reduce((a, p) => a + p.invocations, 0),
      p50all: tot.p50_ms, p99all: tot.p99_ms,
      gbs: day && day.total ? day.total.gb_s : null, capped: false,
    };
    source.textContent = "From GET /v1/stats (the node's rollups).";
  } else {
    const since = Math.min(hourAgo, today.getTime());
    const rows = [];
    let cursor = null, pages = 0;
    do {
      const page = await api("GET", "/v1/invocations" + qs({ since, limit: 1000, cursor }));
      rows.push(...page.invocations);
      cursor = page.next;
      pages++;
    } while (cursor && pages < 10);
    const byMinute = new Map(minutes.map((t) => [t, { n: 0, f: 0, d: [] }]));
    let gbs = 0; const all = [];
    for (const r of rows) {
      const done = r.finished_at_ms || r.created_at_ms;
      if (r.duration_ms != null && r.created_at_ms >= today.getTime()) gbs += (r.duration_ms / 1000) * ((memory[r.function] || 128) / 1024);
      if (r.created_at_ms < hourAgo) continue;
      const b = byMinute.get(Math.floor(done / 60000) * 60000);
      if (!b) continue;
      b.n++;
      if (["failed", "timed_out"].includes(r.status)) b.f++;
      if (r.duration_ms != null) { b.d.push(r.duration_ms); all.push(r.duration_ms); }
    }
    const bs = minutes.map((t) => byMinute.get(t));
    m = {
      t: minutes, count: bs.map((b) => b.n), failed: bs.map((b) => b.f),
      p50: bs.map((b) => pct(b.d, 0.5)), p99: bs.map((b) => pct(b.d, 0.99)),
      hour: bs.reduce((a, b) => a + b.n, 0), hourFailed: bs.reduce((a, b) => a + b.f, 0),
      last5: rows.filter((r) => (r.finished_at_ms || r.created_at_ms) >= now - 300_000).length, p50all: pct(all, 0.5), p99all: pct(all, 0.99), gbs, capped: !!cursor,
    };
    source.textContent = "Computed in the page from GET /v1/invocations (" + num(rows.length) + " records" + (cursor ? ", capped: a lower bound" : "") +
      "); GB-s from each function's live memory. The node's rollups (GET /v1/stats points) replace this when they are there.";
  }
  dash.overview = m;

  function draw() {
    fill(cards,
      card("Invocations / s", num(m.last5 / 300, 2), "last 5 minutes", "ov-rate"),
      card("Invocations, last hour", num(m.hour) + (m.capped ? "+" : ""), "", "ov-hour"),
      card("Errors, last hour", num(m.hourFailed), m.hour ? num((100 * m.hourFailed) / m.hour, 1) + "% failed or timed out" : "", "ov-errors"),
      card("Duration p50", dur(m.p50all), "last hour", "ov-p50"),
      card("Duration p99", dur(m.p99all), "last hour", "ov-p99"),
      card("GB-s today", m.gbs == null ? "—" : num(m.gbs, 3), "since local midnight", "ov-gbs"),
      card("Functions", num(functions.functions.length), "", "ov-functions"),
      node && node.data_dir_bytes != null ? card("Disk", bytes(node.data_dir_bytes), num(node.invocations) + " records kept" + (node.retain_seconds ? ", retention " + span(node.retain_seconds * 1000) : ""), "ov-disk") : null);
  }
  draw();
  const t = m.t.map((x) => x / 1000);
  chart($("#chart-rate"), "rate", ["invocations", "errors"], [t, m.count, m.failed]);
  chart($("#chart-duration"), "duration", ["p50", "p99"], [t, m.p50.map((x) => x ?? null), m.p99.map((x) => x ?? null)]);

  // Live: each function's finished invocations.
  for (const f of functions.functions.slice(0, 20)) {
    ctx.on(feed("_invocations." + f.name, (e) => {
      recent.prepend(h("tr", {}, h("td", {}, h("a", { href: "#/invocations/" + e.id, class: "mono" }, e.id)), h("td", {}, e.function), h("td", {}, status(e.status)),
        h("td", { class: "num" }, dur(e.duration_ms)), h("td", {}, when(e.finished_at_ms))));
      while (recent.children.length > 12) recent.lastChild.remove();
      m.hour++; m.last5++;
      if (["failed", "timed_out"].includes(e.status)) m.hourFailed++;
      const last = m.count.length - 1;
      m.count[last]++;
      if (["failed", "timed_out"].includes(e.status)) m.failed[last]++;
      setChart("rate", [t, m.count, m.failed]);
      draw();
    }, dot.set));
  }
};

function card(label, value, sub, id) {
  return h("div", { class: "card", id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

function pct(values, p) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
}

// ---------- functions ----------

const TEMPLATE = [
  { path: "shoal.toml", text: 'name = "NAME"\nruntime = "python"\nhandler = "main:handler"\ntimeout = "30s"\nmemory_mb = 128\n' },
  { path: "main.py", text: 'def handler(event, ctx):\n    print("hello from the dashboard")\n    return {"echo": event}\n' },
];

views.functions = async (main, ctx) => {
  if (ctx.params[0]) return functionView(main, ctx, ctx.params[0]);
  add(main, h("h1", {}, "Functions"), h("div", { class: "toolbar" }, h("button", { id: "new-function", onclick: () => go("#/functions/_new") }, "New function")));
  const list = await api("GET", "/v1/functions");
  add(main, table(["name", "version", "runtime", "memory", "timeout", "concurrency", "retries", "deployed", "by"],
    list.functions.map((f) => h("tr", {},
      h("td", {}, h("a", { href: "#/functions/" + encodeURIComponent(f.name) }, f.name)), h("td", {}, f.version), h("td", {}, f.runtime),
      h("td", {}, f.memory_mb + " MB"), h("td", {}, dur(f.timeout_ms)), h("td", {}, f.concurrency), h("td", {}, f.retries),
      h("td", {}, when(f.deployed_at_ms)), h("td", {}, byWhom(f.deployed_by)))), "No function yet: New function deploys one."));
};

function byWhom(by) {
  if (!by) return "—";
  return [by.user, by.token_name || by.token_id].filter(Boolean).join(" / ");
}

async function functionView(main, ctx, name) {
  const isNew = name === "_new";
  add(main, h("h1", {}, isNew ? "New function" : name));
  let files = TEMPLATE.map((f) => ({ ...f }));
  if (!isNew) {
    const [fn, versions] = await Promise.all([api("GET", "/v1/functions/" + encodeURIComponent(name)), api("GET", `/v1/functions/${encodeURIComponent(name)}/versions`)]);
    add(main, h("div", { class: "row" },
      h("div", { class: "panel" }, h("h2", {}, "Configuration"), h("dl", { class: "kv", id: "fn-config" },
        kv("live version", fn.version), kv("runtime", fn.runtime), kv("handler", fn.handler), kv("memory", fn.memory_mb + " MB"),
        kv("timeout", dur(fn.timeout_ms)), kv("concurrency", fn.concurrency), kv("retries", fn.retries),
        kv("requirements", fn.has_requirements ? "yes" : "no"), kv("code sha256", h("span", { class: "mono" }, fn.code_sha256.slice(0, 16) + "…")),
        kv("deployed", when(fn.deployed_at_ms) + " by " + byWhom(fn.deployed_by)),
        fn.routes && fn.routes.length ? kv("routes", fn.routes.map((r) => `${r.method} ${r.path}`).join(", ")) : null)),
      h("div", { class: "panel" }, h("h2", {}, "Versions"), versionsTable(name, versions))));
    try {
      const got = await api("GET", `/v1/functions/${encodeURIComponent(name)}/files`);
      files = got.files.map((f) => ({ path: f.path, text: f.text, binary: f.text == null, size: f.size }));
    } catch (e) {
      add(main, h("p", { class: "note" }, "The code is not readable here (" + e.message + "); the editor starts from a template."));
    }
  } else {
    files[0].text = files[0].text.replace("NAME", "hello-dashboard");
  }
  if (!isNew) {
    // The cost of 1,000 calls from recent durations (the usage part's API).
    const est = await api("GET", `/v1/functions/${encodeURIComponent(name)}/estimate`).catch(() => null);
    if (est && est.per_1000_calls) {
      const e = est.per_1000_calls, b = est.based_on;
      add($("#fn-config"), kv("per 1,000 calls", h("span", { id: "fn-estimate" },
        e.gb_s == null ? "no finished invocation yet" : `${num(e.gb_s, 3)} GB-s` + (e.cost == null ? "" : ` ≈ ${num(e.cost, 5)} ${e.currency}`),
        b && b.p50_ms != null ? h("span", { class: "note" }, ` (p50 ${dur(b.p50_ms)} over ${num(b.invocations)} calls, ${b.memory_mb} MB)`) : "")));
    }
  }
  add(main, editor(files, isNew));
  if (!isNew) {
    add(main, invokePanel(name));
    const dot = liveDot();
    const body = h("tbody", { id: "fn-recent" });
    add(main, h("div", { class: "panel" }, h("h2", {}, dot.el, "Recent invocations ", h("a", { href: "#/invocations?function=" + encodeURIComponent(name) }, "(all)")),
      h("table", {}, h("thead", {}, h("tr", {}, ["invocation", "status", "mode", "duration", "created"].map((x) => h("th", {}, x)))), body)));
    const row = (r) => h("tr", {}, h("td", {}, h("a", { class: "mono", href: "#/invocations/" + r.id }, r.id)), h("td", {}, status(r.status)), h("td", {}, r.mode || ""),
      h("td", { class: "num" }, dur(r.duration_ms)), h("td", {}, when(r.created_at_ms || r.finished_at_ms)));
    const page = await api("GET", "/v1/invocations" + qs({ function: name, limit: 10 }));
    add(body, page.invocations.map(row));
    ctx.on(feed("_invocations." + name, (e) => {
      body.prepend(row(e));
      while (body.children.length > 10) body.lastChild.remove();
    }, dot.set));
  }
}

function kv(k, v) {
  return [h("dt", {}, k), h("dd", {}, v)];
}

function versionsTable(name, v) {
  const aliases = Object.entries(v.aliases || {});
  return h("div", {}, table(["version", "deployed", "by", "code", ""],
    [...v.versions].reverse().map((x) => h("tr", {},
      h("td", {}, x.version, x.version === v.live ? " " : "", x.version === v.live ? status("live") : "",
        aliases.filter(([, n]) => n === x.version).map(([a]) => h("span", { class: "status" }, "@" + a))),
      h("td", {}, when(x.deployed_at_ms)), h("td", {}, byWhom(x.deployed_by)), h("td", { class: "mono" }, (x.code_sha256 || "").slice(0, 12)),
      h("td", {}, x.version === v.live ? "" : h("button", {
        class: "secondary", "data-rollback": x.version,
        onclick: async (ev) => {
          ev.target.disabled = true;
          try {
            await api("POST", `/v1/functions/${encodeURIComponent(name)}/rollback`, { version: x.version });
            route();
          } catch (e) { ev.target.after(errorBox(e)); }
        },
      }, "Make live"))))));
}

// The code editor: a tab per file, a text area, add a file, upload a
// directory, deploy (the files as a tar archive to POST /v1/functions).
function editor(files, isNew) {
  let on = Math.max(0, files.findIndex((f) => f.path.endsWith(".py") && !f.binary));
  const tabs = h("div", { class: "tabs", id: "editor-tabs" });
  const area = h("textarea", { class: "code", id: "editor", spellcheck: "false" });
  const result = h("div", { id: "deploy-result" });
  const newPath = h("input", { id: "new-file", placeholder: "lib/util.py" });
  area.addEventListener("input", () => { files[on].text = area.value; });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Tab") {
      e.preventDefault();
      area.setRangeText("    ", area.selectionStart, area.selectionEnd, "end");
      files[on].text = area.value;
    }
  });
  function show() {
    fill(tabs, files.map((f, i) => h("button", { class: i === on ? "on" : null, "data-path": f.path, onclick: () => { on = i; show(); } }, f.path)));
    const f = files[on];
    area.value = f ? (f.binary ? `(${f.path}: ${bytes(f.size)} of binary data, kept as deployed)` : f.text) : "";
    area.disabled = !f || f.binary;
  }
  const upload = h("input", { type: "file", id: "upload-dir", webkitdirectory: true, multiple: true, onchange: async () => {
    const picked = [...upload.files];
    if (!picked.length) return;
    const out = [];
    for (const f of picked) {
      const rel = (f.webkitRelativePath || f.name).split("/");
      if (rel.length > 1) rel.shift(); // the directory's own name
      const path = rel.join("/");
      if (path.split("/").some((p) => p.startsWith(".") || p === "__pycache__" || p === "venv")) continue;
      const data = new Uint8Array(await f.arrayBuffer());
      let text = null;
      try { text = new TextDecoder("utf-8", { fatal: true }).decode(data); } catch { /* binary */ }
      out.push(text == null ? { path, bytes: data, binary: true, size: data.length } : { path, text });
    }
    files.splice(0, files.length, ...out.sort((a, b) => a.path.localeCompare(b.path)));
    on = Math.max(0, files.findIndex((f) => f.path === "main.py"));
    show();
  } });
  async function deploy(dryRun) {
    fill(result, h("p", { class: "note" }, dryRun ? "Checking…" : "Deploying…"));
    try {
      const archive = tar(files.map((f) => ({ path: f.path, text: f.text, bytes: f.bytes })).filter((f) => f.bytes || f.text != null));
      const r = await api("POST", "/v1/functions" + (dryRun ? "?dry_run=true" : ""), archive, { raw: true, type: "application/x-tar" });
      dash.last.deploy = r;
      fill(result, h("p", { class: "ok", id: "deploy-ok" }, r.dry_run ? `${r.name}: the code loads.` : r.unchanged ? `${r.name}: unchanged, version ${r.version} stays live.` : `Deployed ${r.name} version ${r.version}.`,
        " ", h("a", { href: "#/functions/" + encodeURIComponent(r.name) }, "Open")));
      if (!dryRun && isNew) go("#/functions/" + encodeURIComponent(r.name));
    } catch (e) {
      dash.last.deploy = { error: e.message };
      fill(result, errorBox(e));
    }
  }
  show();
  return h("div", { class: "panel" }, h("h2", {}, "Code"), tabs, area,
    h("div", { class: "toolbar" },
      h("button", { id: "deploy", onclick: () => deploy(false) }, "Deploy"),
      h("button", { class: "secondary", onclick: () => deploy(true) }, "Check only"),
      newPath, h("button", { class: "secondary", onclick: () => {
        const p = newPath.value.trim();
        if (!p || files.some((f) => f.path === p)) return;
        files.push({ path: p, text: "" });
        on = files.length - 1;
        newPath.value = "";
        show();
      } }, "Add file"),
      h("label", { class: "note" }, "or upload a directory: ", upload)),
    result);
}

function invokePanel(name) {
  const event = h("textarea", { class: "code", id: "invoke-event", style: "min-height: 90px" }, '{"hello": "world"}');
  const mode = h("select", { id: "invoke-mode" }, h("option", { value: "sync" }, "sync"), h("option", { value: "async" }, "async"));
  const out = h("div", { id: "invoke-result" });
  async function invoke() {
    let body;
    try { body = JSON.parse(event.value || "null"); } catch (e) { fill(out, h("p", { class: "error" }, "The event is not JSON: " + e.message)); return; }
    fill(out, h("p", { class: "note" }, "Running…"));
    const r = await api("POST", `/v1/functions/${encodeURIComponent(name)}/invoke` + (mode.value === "async" ? "?mode=async" : ""), body, { full: true });
    const id = r.headers.get("shoal-invocation-id") || (r.data && (r.data.id || r.data.invocation));
    dash.last.invoke = { status: r.status, id, data: r.data };
    fill(out, h("p", {}, "HTTP ", r.status, " · invocation ", id ? h("a", { class: "mono", id: "invoke-id", href: "#/invocations/" + id }, id) : "—"),
      h("h2", {}, "Output"), h("pre", { id: "invoke-output" }, typeof r.data === "string" ? r.data : json(r.data)));
    if (id && mode.value === "sync") {
      const logs = await api("GET", `/v1/invocations/${id}/logs`).catch((e) => ({ logs: "(" + e.message + ")" }));
      add(out, h("h2", {}, "Logs"), h("pre", { id: "invoke-logs" }, logs.logs || "(no output)"));
    }
  }
  return h("div", { class: "panel" }, h("h2", {}, "Invoke"), event, h("div", { class: "toolbar" }, mode, h("button", { id: "invoke", onclick: () => invoke().catch((e) => fill(out, errorBox(e))) }, "Invoke")), out);
}

// ---------- invocations ----------

views.invocations = async (main, ctx) => {
  if (ctx.params[0]) return invocationView(main, ctx.params[0]);
  add(main, h("h1", {}, "Invocations"));
  const q = ctx.query;
  const fns = await api("GET", "/v1/functions").catch(() => ({ functions: [] }));
  const field = (label, el) => h("label", {}, label, el);
  const f = {
    function: h("select", { name: "function" }, h("option", { value: "" }, "any"), fns.functions.map((x) => h("option", { value: x.name }, x.name))),
    status: h("select", { name: "status" }, ["", "queued", "running", "succeeded", "failed", "timed_out", "cancelled"].map((s) => h("option", { value: s }, s || "any"))),
    mode: h("select", { name: "mode" }, ["", "sync", "async", "queue"].map((s) => h("option", { value: s }, s || "any"))),
    since: h("input", { name: "since", placeholder: "1h, 7d, RFC 3339", size: 14 }),
    until: h("input", { name: "until", placeholder: "same forms", size: 14 }),
    q: h("input", { name: "q", placeholder: "text in logs, output, error", size: 24 }),
    failed: h("input", { type: "checkbox", name: "failed" }),
  };
  for (const [k, el] of Object.entries(f)) {
    const v = q.get(k);
    if (v == null) continue;
    if (el.type === "checkbox") el.checked = v === "true";
    else el.value = v;
  }
  const form = h("form", { class: "filters", id: "invocation-filters", onsubmit: (e) => {
    e.preventDefault();
    const p = {};
    for (const [k, el] of Object.entries(f)) p[k] = el.type === "checkbox" ? (el.checked ? "true" : "") : el.value.trim();
    go("#/invocations" + qs(p));
  } },
  field("function", f.function), field("status", f.status), field("mode", f.mode), field("since", f.since), field("until", f.until), field("text", f.q),
  h("label", { class: "check" }, f.failed, "failed only"), h("button", { type: "submit" }, "Filter"));
  const filters = {};
  for (const k of Object.keys(f)) if (q.get(k)) filters[k] = q.get(k);
  dash.last.invocations = null;
  const list = pager(async (cursor) => {
    const page = await api("GET", "/v1/invocations" + qs({ ...filters, limit: 50, cursor }));
    dash.last.invocations = page.invocations.map((r) => r.id);
    return { rows: page.invocations, next: page.next, note: page.scanned != null ? `${num(page.scanned)} records searched for the text` : "" };
  }, (page) => table(["invocation", "function", "version", "mode", "status", "attempts", "duration", "created", "error"],
    page.rows.map((r) => h("tr", { "data-id": r.id },
      h("td", {}, h("a", { class: "mono", href: "#/invocations/" + r.id }, r.id)), h("td", {}, r.function), h("td", {}, r.version), h("td", {}, r.mode),
      h("td", {}, status(r.status)), h("td", { class: "num" }, r.attempts), h("td", { class: "num" }, dur(r.duration_ms)), h("td", {}, when(r.created_at_ms)),
      h("td", {}, r.error_message ? (r.error_type ? r.error_type + ": " : "") + r.error_message.slice(0, 120) : ""))), "No invocation matches."));
  // New invocations of the filtered function (or of each function) finish
  // while the list is open: say so, and refresh on a click.
  const fresh = h("div", { class: "toolbar", id: "invocations-fresh" });
  let seen = 0;
  const names = filters.function ? [filters.function] : fns.functions.slice(0, 20).map((x) => x.name);
  for (const n of names) {
    ctx.on(feed("_invocations." + n, () => {
      seen++;
      fill(fresh, h("span", { class: "note" }, `${seen} more finished since this page loaded`), h("button", { class: "secondary", onclick: () => { seen = 0; fill(fresh); list.first(); } }, "Refresh"));
    }));
  }
  add(main, form, fresh, list.el);
  await list.loaded;
};

async function invocationView(main, id) {
  const r = await api("GET", "/v1/invocations/" + encodeURIComponent(id));
  const replayOut = h("span", { id: "replay-result" });
  add(main, h("h1", {}, "Invocation ", h("span", { class: "mono" }, r.id)),
    h("div", { class: "toolbar" }, status(r.status), h("a", { href: "#/functions/" + encodeURIComponent(r.function) }, r.function + " v" + r.version), " · ", r.mode,
      h("button", { id: "replay", onclick: async () => {
        try {
          const got = await api("POST", `/v1/invocations/${encodeURIComponent(r.id)}/replay`);
          dash.last.replay = got.id;
          fill(replayOut, "replayed as ", h("a", { class: "mono", href: "#/invocations/" + got.id }, got.id));
        } catch (e) { fill(replayOut, errorBox(e)); }
      } }, "Replay"), replayOut));
  const started = r.started_at_ms, created = r.created_at_ms;
  add(main, h("div", { class: "row" },
    h("div", { class: "panel" }, h("h2", {}, "Timings"), h("dl", { class: "kv", id: "invocation-timings" },
      kv("created", when(created)), kv("started", when(started)), kv("finished", when(r.finished_at_ms)),
      kv("waited", dur(r.queued_ms ?? (started && created ? started - created : null))), kv("ran", dur(r.duration_ms)),
      kv("attempts", `${r.attempts} of ${r.max_attempts}`), kv("cold start", r.cold_start ? "yes" : "no"),
      kv("billed", num(r.billed_gb_seconds, 6) + " GB-s"), r.cache_hit ? kv("cache", "hit") : null,
      r.next_attempt_at_ms ? kv("next attempt", when(r.next_attempt_at_ms)) : null,
      r.job ? kv("job", h("a", { href: "#/jobs/" + r.job.job }, r.job.job + " #" + r.job.index)) : null,
      r.user || r.token ? kv("started by", [r.user, r.token].filter(Boolean).join(" / ")) : null)),
    h("div", { class: "panel" }, h("h2", {}, "Event"), h("pre", { id: "invocation-event" }, json(r.input)),
      h("h2", {}, r.error ? "Error" : "Output"),
      r.error ? h("pre", { id: "invocation-error" }, `${r.error.type}${r.error.exception ? " " + r.error.exception : ""}: ${r.error.message}\n\n${r.error.traceback || ""}`)
        : h("pre", { id: "invocation-output" }, json(r.output)))));
  const logs = await api("GET", `/v1/invocations/${encodeURIComponent(id)}/logs`).catch((e) => ({ logs: "(" + e.message + ")" }));
  add(main, h("div", { class: "panel" }, h("h2", {}, "Logs"), h("pre", { id: "invocation-logs" }, logs.logs || "(no output)")));
}

// ---------- queues ----------

views.queues = async (main, ctx) => {
  if (ctx.params[0]) return queueView(main, ctx, ctx.params[0]);
  const dot = liveDot();
  add(main, h("h1", {}, dot.el, "Queues"));
  const list = await api("GET", "/v1/queues");
  const cells = {};
  add(main, table(["name", "subscriber", "waiting", "in flight", "dead", "sent", "acked", "oldest"],
    list.queues.map((q) => {
      const c = (cells[q.name] = { waiting: h("td", { class: "num" }, num(q.depth.waiting)), in_flight: h("td", { class: "num" }, num(q.depth.in_flight)), dead: h("td", { class: "num" }, num(q.depth.dead)) });
      return h("tr", { "data-queue": q.name }, h("td", {}, h("a", { href: "#/queues/" + encodeURIComponent(q.name) }, q.name)), h("td", {}, q.subscriber || "—"),
        c.waiting, c.in_flight, c.dead,
        h("td", { class: "num" }, num(q.counters.sent)), h("td", { class: "num" }, num(q.counters.acked)), h("td", {}, dur(q.depth.oldest_age_ms)));
    }), "No queue yet."));
  // Depths follow each queue's feed (the first 20 queues).
  for (const q of list.queues.slice(0, 20)) {
    ctx.on(feed("_queues." + q.name, (d) => {
      for (const k of ["waiting", "in_flight", "dead"]) if (d[k] != null) fill(cells[q.name][k], num(d[k]));
    }, dot.set));
  }
};

async function queueView(main, ctx, name) {
  const path = "/v1/queues/" + encodeURIComponent(name);
  const [q, stats] = await Promise.all([api("GET", path), api("GET", path + "/stats" + qs({ since: Date.now() - 3600_000 }))]);
  const dot = liveDot();
  const depth = h("div", { class: "cards" });
  const showDepth = (d) => fill(depth, card("Waiting", num(d.waiting), "", "q-waiting"), card("In flight", num(d.in_flight), "", "q-in-flight"), card("Dead letters", num(d.dead), "", "q-dead"));
  showDepth(q.depth);
  add(main, h("h1", {}, "Queue ", name), h("p", { class: "note" }, `subscriber ${q.subscriber || "none"} · ${q.max_attempts} attempt${q.max_attempts === 1 ? "" : "s"} · visibility ${dur(q.visibility_timeout_ms)} · retry delay ${dur(q.retry_delay_ms)}`),
    depth, h("div", { class: "panel" }, h("h2", {}, dot.el, "Depth over time"), h("div", { class: "chart", id: "chart-queue" })));
  // The node's sampled history, then the live feed's changes.
  const data = [[], [], [], []];
  for (const s of stats.samples) {
    data[0].push(s.at_ms / 1000); data[1].push(s.depth.waiting); data[2].push(s.depth.in_flight); data[3].push(s.depth.dead);
  }
  const push = (d) => {
    data[0].push(Date.now() / 1000); data[1].push(d.waiting); data[2].push(d.in_flight); data[3].push(d.dead);
    if (data[0].length > 5000) data.forEach((a) => a.shift());
  };
  push(q.depth);
  chart($("#chart-queue"), "queue", ["waiting", "in flight", "dead"], data);
  dash.charts.queue.updates = 0;
  ctx.on(feed("_queues." + name, (d) => {
    push(d);
    showDepth(d);
    setChart("queue", data);
    dash.charts.queue.updates++;
  }, dot.set));

  // Send a message (handy for trying a subscriber).
  const body = h("textarea", { class: "code", id: "queue-message", style: "min-height: 50px" }, '{"n": 1}');
  const sent = h("span", {});
  add(main, h("div", { class: "panel" }, h("h2", {}, "Send a message"), body, h("div", { class: "toolbar" }, h("button", { onclick: async () => {
    try { const r = await api("POST", path + "/messages", { body: JSON.parse(body.value) }); fill(sent, "sent " + r.ids.join(", ")); } catch (e) { fill(sent, errorBox(e)); }
  } }, "Send"), sent)));

  // Dead letters, a page at a time, with redrive and purge.
  const chosen = new Set();
  const outcome = h("span", { id: "dead-result" });
  const dead = pager(async (cursor) => {
    const page = await api("GET", path + "/dead-letters" + qs({ limit: 50, after: cursor }));
    chosen.clear();
    dash.last.deadLetters = page.dead_letters.map((d) => d.id);
    return { rows: page.dead_letters, next: page.next };
  }, (page) => table(["", "id", "reason", "attempts", "sent", "dead", "body"], page.rows.map((d) => h("tr", {},
    h("td", {}, h("input", { type: "checkbox", "data-dead": d.id, onchange: (e) => (e.target.checked ? chosen.add(d.id) : chosen.delete(d.id)) })),
    h("td", { class: "mono" }, d.id), h("td", {}, d.reason), h("td", { class: "num" }, d.attempts), h("td", {}, when(d.sent_at_ms)), h("td", {}, when(d.dead_at_ms)),
    h("td", { class: "mono" }, JSON.stringify(d.body).slice(0, 100)))), "No dead letters."));
  const act = (what) => async () => {
    try {
      const r = await api("POST", `${path}/dead-letters/${what}`, chosen.size ? { ids: [...chosen] } : {});
      fill(outcome, `${what === "redrive" ? "redriven" : "purged"}: ${r.count}`);
      dead.first();
    } catch (e) { fill(outcome, errorBox(e)); }
  };
  add(main, h("div", { class: "panel" }, h("h2", {}, "Dead letters"),
    h("div", { class: "toolbar" }, h("button", { id: "redrive", onclick: act("redrive") }, "Redrive selected (or all)"), h("button", { class: "danger", onclick: act("purge") }, "Purge selected (or all)"), outcome),
    dead.el));
  await dead.loaded;
}

// ---------- jobs ----------

views.jobs = async (main, ctx) => {
  if (ctx.params[0]) return jobView(main, ctx, ctx.params[0]);
  add(main, h("h1", {}, "Jobs"));
  const id = h("input", { id: "job-id", placeholder: "job id", size: 40 });
  const fn = h("input", { id: "job-function", placeholder: "function" });
  const events = h("textarea", { class: "code", id: "job-events", style: "min-height: 60px" }, "[1, 2, 3]");
  const out = h("span", {});
  add(main, h("div", { class: "row" },
    h("div", { class: "panel" }, h("h2", {}, "Open a job"), h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); if (id.value.trim()) go("#/jobs/" + encodeURIComponent(id.value.trim())); } }, id, h("button", { id: "open-job" }, "Open")),
      h("p", { class: "note" }, "A job's id comes from POST /v1/jobs, ctx.map, or an invocation's detail (its job).")),
    h("div", { class: "panel" }, h("h2", {}, "Start a job"), fn, events, h("div", { class: "toolbar" }, h("button", { onclick: async () => {
      try {
        const r = await api("POST", "/v1/jobs", { function: fn.value.trim(), events: JSON.parse(events.value) });
        go("#/jobs/" + r.job);
      } catch (e) { fill(out, errorBox(e)); }
    } }, "Start"), out))));
  // Every job, newest first, a page at a time; while one on the page is
  // running, the page is read again every 2 s (progress, live).
  let running = false;
  const list = pager(async (cursor) => {
    const page = await api("GET", "/v1/jobs" + qs({ cursor, limit: 20 }));
    dash.last.jobs = page;
    running = page.jobs.some((j) => j.status === "running" || j.status === "cancelling");
    return page;
  }, (page) => h("div", { id: "jobs-list" }, table(["job", "function", "status", "progress", "done", "failed", "created"], page.jobs.map((j) => h("tr", { "data-job": j.id },
    h("td", {}, h("a", { class: "mono", href: "#/jobs/" + j.id }, j.id)),
    h("td", {}, j.then ? `${j.function} → ${j.then}` : j.function, j.parent ? h("span", { class: "note" }, " (nested)") : null),
    h("td", {}, status(j.status)), h("td", {}, progress(j.progress)),
    h("td", { class: "num" }, `${j.counts.total - j.counts.pending}/${j.counts.total}`),
    h("td", { class: "num" }, num(j.counts.failed)), h("td", {}, when(j.created_at_ms)))), "No jobs yet.")));
  add(main, h("h2", {}, "All jobs"), list.el);
  await list.loaded;
  const timer = setInterval(() => { if (running && !document.hidden) list.reload(); }, 2000);
  ctx.on(() => clearInterval(timer));
};

function progress(p) {
  return h("div", { class: "progress", title: `${Math.round(p * 100)}%` }, h("div", { style: `width: ${Math.round(p * 100)}%` }));
}

async function jobView(main, ctx, id) {
  const box = h("div", { id: "job" });
  const dot = liveDot();
  add(main, h("h1", {}, dot.el, "Job ", h("span", { class: "mono" }, id)), box);
  let job;
  async function load() {
    job = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
    dash.last.job = job;
    const c = job.counts;
    const done = ["finished", "cancelled"].includes(job.status);
    const cancelOut = h("span", { id: "cancel-result" });
    fill(box,
      h("div", { class: "toolbar" }, h("span", { id: "job-status" }, status(job.status)), progress(job.progress), h("span", { id: "job-progress" }, `${Math.round(job.progress * 100)}%`),
        h("button", { class: "danger", id: "cancel-job", disabled: done || job.status === "cancelling", onclick: async () => {
          try { await api("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`); await load(); } catch (e) { fill(cancelOut, errorBox(e)); }
        } }, "Cancel"), cancelOut),
      h("div", { class: "cards" }, card("Children", num(c.total)), card("Pending", num(c.pending)), card("Succeeded", num(c.succeeded)), card("Failed", num(c.failed)), card("Cancelled", num(c.cancelled))),
      h("div", { class: "row" },
        h("div", { class: "panel" }, h("h2", {}, "Job"), h("dl", { class: "kv" }, kv("function", job.function), kv("then", job.then || "—"), kv("created", when(job.created_at_ms)),
          kv("finished", when(job.finished_at_ms)), kv("cancelled", when(job.cancelled_at_ms)),
          job.invocation ? kv("started by", h("a", { href: "#/invocations/" + job.invocation }, job.invocation)) : null,
          job.parent ? kv("parent job", h("a", { href: "#/jobs/" + job.parent }, job.parent)) : null,
          job.then_invocation ? kv("fan-in", h("a", { href: "#/invocations/" + job.then_invocation }, job.then_invocation)) : null)),
        h("div", { class: "panel tree" }, h("h2", {}, "Tree"), h("ul", { id: "job-tree" }, treeNode({ id: job.id, status: job.status, function: job.function, counts: job.counts, jobs: job.jobs })))),
      job.failures.length ? h("div", { class: "panel" }, h("h2", {}, "First failures"), table(["#", "invocation", "status", "error"], job.failures.map((f) => h("tr", {},
        h("td", {}, f.index), h("td", {}, h("a", { class: "mono", href: "#/invocations/" + f.invocation }, f.invocation)), h("td", {}, status(f.status)),
        h("td", {}, f.error ? f.error.message : ""))))) : null);
  }
  await load();
  let pending = null;
  ctx.on(feed("_jobs." + id, () => {
    // The feed says what changed; the job's tree comes from its record.
    if (!pending) pending = setTimeout(() => { pending = null; load().catch(() => {}); }, 250);
  }, dot.set));
  ctx.on(() => clearTimeout(pending));
}

function treeNode(n) {
  return h("li", {}, h("a", { class: "mono", href: "#/jobs/" + n.id }, n.id.slice(0, 12)), " ", n.function, " ", status(n.status),
    ` ${n.counts.succeeded + n.counts.failed + n.counts.cancelled}/${n.counts.total}`,
    n.jobs && n.jobs.length ? h("ul", {}, n.jobs.map(treeNode)) : null);
}

// ---------- schedules ----------

views.schedules = async (main) => {
  add(main, h("h1", {}, "Schedules"));
  const list = await api("GET", "/v1/schedules");
  const items = list.schedules || list.items || [];
  const history = h("div", { id: "schedule-history" });
  add(main, table(["function", "#", "when", "time zone", "missed", "next runs", "last", "state", ""],
    items.map((s) => {
      const base = `/v1/schedules/${encodeURIComponent(s.function)}/${s.index}`;
      const out = h("span", {});
      return h("tr", { "data-schedule": `${s.function}/${s.index}` },
        h("td", {}, h("a", { href: "#/functions/" + encodeURIComponent(s.function) }, s.function)), h("td", {}, s.index),
        h("td", { class: "mono" }, s.cron ? s.cron : "every " + span(s.every_ms)), h("td", {}, s.timezone), h("td", {}, s.missed),
        h("td", {}, (s.next_ms || []).slice(0, 3).map((t) => h("div", {}, when(t), " ", h("span", { class: "note" }, ago(t))))),
        h("td", {}, s.last ? [when(s.last.fired_at_ms), " ", s.last.invocation ? h("a", { class: "mono", href: "#/invocations/" + s.last.invocation }, "run") : ""] : "—"),
        h("td", { class: "schedule-state" }, status(s.paused ? "paused" : "active")),
        h("td", {}, h("button", { class: "secondary", "data-toggle": `${s.function}/${s.index}`, onclick: async () => {
          try { await api("POST", `${base}/${s.paused ? "resume" : "pause"}`); route(); } catch (e) { fill(out, errorBox(e)); }
        } }, s.paused ? "Resume" : "Pause"), " ", h("button", { class: "link", "data-history": `${s.function}/${s.index}`, onclick: () => showHistory(history, s) }, "History"), out));
    }), "No schedule: add [[schedule]] to a function's shoal.toml."), history);
};

async function showHistory(box, s) {
  fill(box, h("h2", {}, `History of ${s.function} #${s.index}`));
  const p = pager(async (cursor) => {
    const page = await api("GET", `/v1/schedules/${encodeURIComponent(s.function)}/${s.index}/history` + qs({ limit: 50, cursor }));
    return { rows: page.items, next: page.cursor };
  }, (page) => table(["tick", "fired", "invocation", "node", "status"], page.rows.map((t) => h("tr", { class: "tick" },
    h("td", {}, when(t.tick_ms)), h("td", {}, when(t.fired_at_ms)), h("td", {}, t.invocation ? h("a", { class: "mono", href: "#/invocations/" + t.invocation }, t.invocation) : "—"),
    h("td", {}, t.node || "—"), h("td", {}, status(t.status))))));
  add(box, p.el);
}

// ---------- usage and cost ----------

views.usage = async (main, ctx) => {
  add(main, h("h1", {}, "Usage and cost"));
  const group = ctx.query.get("group_by") || "function";
  const since = ctx.query.get("since") || "";
  const until = ctx.query.get("until") || "";
  const f = { group_by: h("select", { name: "group_by" }, ["function", "token", "day"].map((g) => h("option", { value: g, selected: g === group }, g))),
    since: h("input", { value: since, placeholder: "7d, RFC 3339" }), until: h("input", { value: until, placeholder: "now" }) };
  add(main, h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); go("#/usage" + qs({ group_by: f.group_by.value, since: f.since.value, until: f.until.value })); } },
    h("label", {}, "group by", f.group_by), h("label", {}, "since", f.since), h("label", {}, "until", f.until), h("button", {}, "Show")));
  const node = await api("GET", "/v1/stats").catch(() => null);
  if (node && node.data_dir_bytes != null) add(main, h("div", { class: "cards" }, card("Data directory", bytes(node.data_dir_bytes), "store, code, environments"),
    card("Invocation records", num(node.invocations)), card("Retention", node.retain_seconds ? span(node.retain_seconds * 1000) : "kept until removed")));
  try {
    const u = await api("GET", "/v1/usage" + qs({ group_by: group, since, until }));
    const cur = (u.prices && u.prices.currency) || "";
    add(main, table([group, "invocations", "failed", "GB-s", "cost"], [...u.items, { key: "total", ...u.total }].map((r) => h("tr", {},
      h("td", {}, r.key), h("td", { class: "num" }, num(r.invocations)), h("td", { class: "num" }, num(r.failed)), h("td", { class: "num" }, num(r.gb_s, 3)),
      h("td", { class: "num" }, r.cost == null ? "—" : num(r.cost, 4) + " " + cur)))));
    if (u.prices) {
      const p = u.prices;
      const field = (label, key, value) => h("label", {}, label, h("input", { name: key, value: String(value), size: 12 }));
      const out = h("span", { id: "prices-result" });
      const form = h("form", { class: "filters", id: "prices", onsubmit: async (e) => {
        e.preventDefault();
        const get = (k) => form.querySelector(`[name="${k}"]`).value.trim();
        try {
          await api("PUT", "/v1/usage/prices", { currency: get("currency"), per_gb_s: Number(get("per_gb_s")),
            per_million_invocations: Number(get("per_million_invocations")), per_gb_month_stored: Number(get("per_gb_month_stored")) });
          route();
        } catch (err) { fill(out, errorBox(err)); }
      } }, field("currency", "currency", p.currency), field("per GB-s", "per_gb_s", p.per_gb_s),
      field("per million invocations", "per_million_invocations", p.per_million_invocations),
      field("per GB-month stored", "per_gb_month_stored", p.per_gb_month_stored), h("button", {}, "Set prices"), out);
      add(main, h("h2", {}, "Prices (an admin sets them)"), form);
    }
  } catch (e) {
    if (!missing(e)) throw e;
    add(main, h("p", { class: "note" }, "This node does not serve GET /v1/usage yet; the figures above are what it keeps."));
  }
};

// ---------- users and tokens ----------

views.users = async (main) => {
  add(main, h("h1", {}, "Users and tokens"));
  try {
    const users = await api("GET", "/v1/users");
    const list = users.items || users.users || [];
    const name = h("input", { placeholder: "name", id: "user-name" });
    const role = roleSelect("user-role");
    const out = h("span", {});
    add(main, h("h2", {}, "Users"), table(["name", "role", "tokens", "created", ""], list.map((u) => h("tr", { "data-user": u.name }, h("td", {}, u.name), h("td", {}, u.role),
      h("td", {}, (u.tokens || []).map((t) => t.name || t.id).join(", ") || "—"), h("td", {}, when(u.created_at_ms)),
      h("td", {}, h("button", { class: "link", onclick: async () => { try { await api("DELETE", "/v1/users/" + encodeURIComponent(u.name)); route(); } catch (e) { fill(out, errorBox(e)); } } }, "Remove"))))),
    h("div", { class: "toolbar" }, name, role, h("button", { id: "add-user", onclick: async () => { try { await api("POST", "/v1/users", { name: name.value.trim(), role: role.value }); route(); } catch (e) { fill(out, errorBox(e)); } } }, "Add user"), out));
  } catch (e) {
    if (!missing(e) && e.status !== 403) throw e;
    add(main, h("p", { class: "note" }, e.status === 403 ? "Users: an admin's token lists them." : "This node has no named users yet (GET /v1/users); tokens below."));
  }
  let tokens;
  try {
    tokens = await api("GET", "/v1/tokens");
  } catch (e) {
    if (e.status === 403) { add(main, h("p", { class: "note" }, "Tokens: an admin's token lists them.")); return; }
    throw e;
  }
  const created = h("div", { id: "token-created" });
  const name = h("input", { placeholder: "name", id: "token-name" });
  const role = roleSelect("token-role");
  const user = h("input", { placeholder: "user (optional)", id: "token-user" });
  const scopes = h("input", { placeholder: "scopes, comma separated", size: 30, id: "token-scopes" });
  add(main, h("h2", {}, "Tokens"), table(["id", "name", "role", "user", "scopes", "created", ""], (tokens.tokens || tokens.items || []).map((t) => h("tr", {},
    h("td", { class: "mono" }, t.id), h("td", {}, t.name), h("td", {}, t.role), h("td", {}, t.user || "—"), h("td", {}, [...(t.scopes || []), ...(t.channels || [])].join(", ") || "—"),
    h("td", {}, when(t.created_at_ms)), h("td", {}, h("button", { class: "link", "data-budget": t.id, onclick: (e) => budgetRow(e.target.closest("tr"), t) }, "Budget"), " ",
      h("button", { class: "link", onclick: async () => {
        try { await api("DELETE", "/v1/tokens/" + encodeURIComponent(t.id)); route(); } catch (e) { fill(created, errorBox(e)); }
      } }, "Revoke"))))),
  h("div", { class: "toolbar" }, name, role, user, scopes, h("button", { id: "create-token", onclick: async () => {
    const body = { name: name.value.trim() || undefined, role: role.value };
    if (user.value.trim()) body.user = user.value.trim();
    const sc = scopes.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (sc.length) body.scopes = sc;
    try {
      const t = await api("POST", "/v1/tokens", body);
      fill(created, h("p", { id: "token-secret" }, "New token for ", t.name || t.id, " (shown once): ", h("code", {}, t.token)));
      dash.last.token = t;
    } catch (e) { fill(created, errorBox(e)); }
  } }, "Create token")), created);
};

// A token's budget under its row: what it spent this period, and a form
// to set (or remove) it.
async function budgetRow(tr, t) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("budget-row")) { next.remove(); return; }
  const path = `/v1/tokens/${encodeURIComponent(t.id)}/budget`;
  const cell = h("td", { colspan: "7" });
  tr.after(h("tr", { class: "budget-row" }, cell));
  let b = null;
  try { b = await api("GET", path); } catch (e) { if (e.status !== 404) { fill(cell, errorBox(e)); return; } }
  const sel = (name, values, v) => h("select", { name }, values.map((x) => h("option", { value: x, selected: x === v }, x)));
  const period = sel("period", ["day", "month"], b ? b.period : "day");
  const unit = sel("unit", ["usd", "gb_s"], b ? b.unit : "usd");
  const limit = h("input", { name: "limit", size: 8, value: b ? String(b.limit) : "" });
  const notify = h("input", { name: "notify_at", size: 5, value: b && b.notify_at != null ? String(b.notify_at) : "0.8" });
  const enforce = h("input", { type: "checkbox", name: "enforce", checked: b ? b.enforce : true });
  const out = h("span", { class: "budget-result" });
  fill(cell,
    h("p", { class: "note" }, b ? `Spent ${num(b.spent, 4)} of ${num(b.limit, 4)} ${b.unit} this ${b.period}${b.exceeded ? " — exceeded" : ""}; resets ${when(b.resets_at_ms)}.` : "No budget: this token's spending is not limited."),
    h("div", { class: "toolbar" }, h("label", { class: "field" }, "period", period), h("label", { class: "field" }, "limit", limit), h("label", { class: "field" }, "unit", unit),
      h("label", { class: "field" }, "notify at", notify), h("label", { class: "check" }, enforce, "refuse work past it"),
      h("button", { class: "save-budget", onclick: async () => {
        try {
          const got = await api("PUT", path, { period: period.value, limit: Number(limit.value), unit: unit.value,
            notify_at: notify.value.trim() ? Number(notify.value) : undefined, enforce: enforce.checked });
          dash.last.budget = got;
          fill(out, "saved");
        } catch (e) { fill(out, errorBox(e)); }
      } }, "Save budget"),
      b ? h("button", { class: "secondary", onclick: async () => { try { await api("DELETE", path); fill(out, "removed"); } catch (e) { fill(out, errorBox(e)); } } }, "Remove") : null, out));
}

function roleSelect(id) {
  return h("select", { id }, ["reader", "invoker", "developer", "admin"].map((r) => h("option", { value: r }, r)));
}

// ---------- notifications ----------

views.notifications = async (main, ctx) => {
  add(main, h("h1", {}, "Notifications"));
  const dot = liveDot();
  const events = h("tbody", { id: "events-live" });
  try {
    const list = await api("GET", "/v1/notifications");
    const items = list.items || list.notifications || [];
    const out = h("div", {});
    add(main, table(["name", "url", "events", "functions", ""], items.map((n) => h("tr", { "data-webhook": n.name }, h("td", {}, n.name), h("td", { class: "mono" }, n.url),
      h("td", {}, (n.events || []).join(", ")), h("td", {}, (n.functions || []).join(", ") || "all"),
      h("td", {}, h("button", { class: "link", onclick: async () => { try { await api("DELETE", "/v1/notifications/" + encodeURIComponent(n.name)); route(); } catch (e) { fill(out, errorBox(e)); } } }, "Remove")))),
    "No webhook yet."));
    const name = h("input", { placeholder: "name", id: "notify-name" });
    const url = h("input", { placeholder: "https://…", size: 34, id: "notify-url" });
    const evs = h("input", { value: "invocation.failed, dead_letter", size: 34, id: "notify-events" });
    const fns = h("input", { placeholder: "functions (patterns, optional)", id: "notify-functions" });
    add(main, h("div", { class: "toolbar" }, name, url, evs, fns, h("button", { id: "save-webhook", onclick: async () => {
      const body = { url: url.value.trim(), events: evs.value.split(",").map((s) => s.trim()).filter(Boolean) };
      const f = fns.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (f.length) body.functions = f;
      try {
        const r = await api("PUT", "/v1/notifications/" + encodeURIComponent(name.value.trim()), body);
        dash.last.webhook = r;
        fill(out, h("p", { id: "webhook-saved" }, `Saved ${r.name}. `, r.secret ? ["Signing secret (shown once): ", h("code", {}, r.secret)] : ""));
      } catch (e) { fill(out, errorBox(e)); }
    } }, "Save webhook")), out);
    add(main, h("h2", {}, "Deliveries"));
    const p = pager(async (cursor) => {
      const page = await api("GET", "/v1/notifications/deliveries" + qs({ limit: 50, cursor }));
      return { rows: page.items, next: page.cursor };
    }, (page) => table(["id", "webhook", "event", "status", "attempts", "last answer", "created", "delivered"], page.rows.map((d) => h("tr", { class: "delivery" },
      h("td", { class: "mono" }, d.id), h("td", {}, d.name), h("td", {}, d.event), h("td", {}, status(d.status)), h("td", { class: "num" }, d.attempts),
      h("td", {}, d.last_status_code || d.last_error || "—"), h("td", {}, when(d.created_at_ms)), h("td", {}, when(d.delivered_at_ms)))), "No delivery yet."));
    add(main, p.el);
    await p.loaded;
  } catch (e) {
    if (!missing(e) && e.status !== 403) throw e;
    add(main, h("p", { class: "note" }, e.status === 403 ? "Webhooks: an admin's token lists them." : "This node has no webhooks yet (GET /v1/notifications); the events it publishes show below."));
  }
  add(main, h("div", { class: "panel" }, h("h2", {}, dot.el, "Events as they happen (channel _events)"),
    h("table", {}, h("thead", {}, h("tr", {}, ["at", "type", "data"].map((x) => h("th", {}, x)))), events)));
  ctx.on(feed("_events", (e) => {
    events.prepend(h("tr", {}, h("td", {}, when(e.at_ms || Date.now())), h("td", {}, e.type || ""), h("td", { class: "mono" }, JSON.stringify(e.data ?? e).slice(0, 200))));
    while (events.children.length > 50) events.lastChild.remove();
  }, dot.set));
};

// ---------- nodes ----------

views.nodes = async (main, ctx) => {
  add(main, h("h1", {}, "Nodes"));
  const box = h("div", {});
  add(main, box);
  async function load() {
    const [nodes, health, stats] = await Promise.all([api("GET", "/v1/nodes"), fetch("/healthz").then((r) => r.json()).catch(() => null), api("GET", "/v1/stats").catch(() => null)]);
    fill(box, h("div", { class: "cards" },
      health ? card("This node", health.status, `version ${health.version} · sandbox ${health.sandbox}`) : null,
      stats && stats.data_dir_bytes != null ? card("Data directory", bytes(stats.data_dir_bytes), num(stats.invocations) + " invocation records") : null,
      stats && stats.data_dir_bytes != null ? card("Retention", stats.retain_seconds ? span(stats.retain_seconds * 1000) : "none") : null),
    table(["id", "address", "state", "version", "running", "workers", "load", "started", "last seen"], nodes.nodes.map((n) => h("tr", {},
      h("td", { class: "mono" }, n.id, n.this ? " (this)" : ""), h("td", {}, n.address), h("td", {}, status(n.state)), h("td", {}, n.version),
      h("td", { class: "num" }, n.running), h("td", { class: "num" }, n.workers), h("td", { class: "num" }, n.load == null ? "—" : n.load.toFixed(2)),
      h("td", {}, when(n.started_at_ms)), h("td", {}, ago(n.last_seen_ms))))));
  }
  await load();
  const timer = setInterval(() => load().catch(() => {}), 5000);
  ctx.on(() => clearInterval(timer));
};

// ---------- start ----------

$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("#signin-token").value.trim());
});
$("#signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
if (token()) signIn(token());
else showSignIn();
