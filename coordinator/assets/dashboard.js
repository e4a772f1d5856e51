// tally dashboard: polls /cluster (coordinators and counters) and /stats
// once a second, follows one tenant's count through the Server-Sent Events
// stream, and writes through POST /items like any client. No framework, no
// build step.
"use strict";

const $ = (id) => document.getElementById(id);

// ---- coordinators and counters --------------------------------------------------------

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderCluster(view) {
  $("decided").textContent = view.decided_index;
  $("in-sync").textContent = view.in_sync;
  $("min-insync").textContent = view.min_insync;
  // Why the cluster cannot serve, in the coordinator's words.
  const availability = $("availability");
  const problem = view.availability && view.availability.problem;
  availability.hidden = !problem;
  availability.dataset.status = problem ? view.availability.status : "ok";
  availability.textContent = problem ? view.availability.status + ": " + problem : "";
  renderCoordinators(view);
  const body = $("counters").tBodies[0];
  body.replaceChildren();
  if (view.counters.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    tr.appendChild(cell("no counter registered")).colSpan = 8;
    body.appendChild(tr);
  }
  for (const c of view.counters) {
    const tr = document.createElement("tr");
    tr.dataset.counter = c.id;
    tr.dataset.state = c.state;
    tr.dataset.inSync = c.in_sync;
    tr.appendChild(cell(c.id));
    tr.appendChild(cell(c.url, "url"));
    const state = cell("");
    const badge = document.createElement("span");
    badge.className = "badge " + c.state + "-state";
    badge.textContent = c.state;
    state.appendChild(badge);
    tr.appendChild(state);
    tr.appendChild(cell(c.in_sync ? (c.registered ? "yes" : "yes, not registered") : "no"));
    tr.appendChild(cell(c.applied_index, "num"));
    tr.appendChild(cell(c.lag, "num"));
    const seen = c.last_seen_ms_ago == null ? "never" : (c.last_seen_ms_ago / 1000).toFixed(1) + " s ago";
    tr.appendChild(cell(seen, "num"));
    tr.appendChild(cell(copyProgress(c.catch_up), "catch-up"));
    body.appendChild(tr);
  }
}

// The coordinators that replicate the decision log, in `--peers` order,
// as the coordinator answering /cluster sees them; the leader's row stands
// out. A coordinator running alone is one row, the leader.
function renderCoordinators(view) {
  const coordinators = view.coordinators || [];
  $("leader-note").textContent = view.leader ? "" : "(no leader right now)";
  const body = $("coordinators").tBodies[0];
  body.replaceChildren();
  if (coordinators.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    tr.appendChild(cell("none reported")).colSpan = 4;
    body.appendChild(tr);
  }
  for (const c of coordinators) {
    const tr = document.createElement("tr");
    tr.dataset.coordinator = c.url;
    tr.dataset.role = c.role;
    if (c.url === view.leader) tr.className = "leader";
    tr.appendChild(cell(c.url, "url"));
    const role = cell("");
    const badge = document.createElement("span");
    badge.className = "badge " + c.role + "-role";
    badge.textContent = c.role;
    role.appendChild(badge);
    tr.appendChild(role);
    tr.appendChild(cell(c.log_index, "num"));
    tr.appendChild(cell(c.lag, "num"));
    body.appendChild(tr);
  }
}

// "42% of 1,000,000 from http://…, 12 s left" while a counter copies.
function copyProgress(p) {
  if (!p) return "";
  const pct = p.total > 0 ? Math.floor((100 * p.copied) / p.total) : 0;
  const left = p.eta_secs == null ? "" : ", " + p.eta_secs + " s left";
  return pct + "% of " + p.total.toLocaleString("en") + " from " + p.peer + left;
}

function setConnection(ok) {
  const el = $("connection");
  el.className = "badge " + (ok ? "ok" : "bad");
  el.textContent = ok ? "connected" : "coordinator unreachable";
}

// ---- writes/s chart ----------------------------------------------------

const WINDOW_MS = 5 * 60 * 1000;
const samples = []; // {t, items}

function recordStats(stats) {
  samples.push({ t: stats.now_ms, items: stats.items_acknowledged });
  while (samples.length > 2 && samples[0].t < stats.now_ms - WINDOW_MS) samples.shift();
  drawChart();
}

function rates() {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    if (dt > 0) out.push({ t: samples[i].t, rate: Math.max(0, samples[i].items - samples[i - 1].items) / dt });
  }
  return out;
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const points = rates();
  const last = points.length ? points[points.length - 1].rate : 0;
  $("rate").textContent = Math.round(last) + " /s";
  const peak = Math.max(0, ...points.map((p) => p.rate));
  canvas.dataset.peak = Math.round(peak);
  const max = Math.max(10, peak) * 1.1;
  const left = 48, bottom = height - 20, top = 8, right = width - 8;
  g.strokeStyle = "#e6e9ee"; g.fillStyle = "#8a93a0"; g.font = "11px system-ui, sans-serif"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - top) * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    g.fillText(Math.round(max * i / 4), 4, y + 4);
  }
  g.fillText("-5 min", left, height - 4);
  g.fillText("now", right - 22, height - 4);
  if (points.length < 1) return;
  const now = samples[samples.length - 1].t;
  const x = (t) => left + (right - left) * (1 - (now - t) / WINDOW_MS);
  const y = (r) => bottom - (bottom - top) * r / max;
  g.beginPath();
  g.moveTo(x(points[0].t), bottom);
  for (const p of points) g.lineTo(x(p.t), y(p.rate));
  g.lineTo(x(points[points.length - 1].t), bottom);
  g.closePath();
  g.fillStyle = "rgba(36, 99, 209, 0.15)"; g.fill();
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.rate)) : g.moveTo(x(p.t), y(p.rate))));
  g.strokeStyle = "#2463d1"; g.lineWidth = 2; g.stroke();
}

// ---- polling -----------------------------------------------------------

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

async function poll() {
  try {
    const [view, stats] = await Promise.all([getJson("/cluster"), getJson("/stats")]);
    renderCluster(view);
    recordStats(stats);
    setConnection(true);
  } catch (e) {
    setConnection(false);
  }
  setTimeout(poll, 1000);
}

// ---- live count ----------------------------------------------------------

let source = null;

function watch(tenant) {
  if (source) source.close();
  $("live-count").textContent = "–";
  $("live-tenant").textContent = "tenant " + tenant;
  $("live-status").textContent = "connecting…";
  source = new EventSource("/items/" + encodeURIComponent(tenant) + "/count/stream");
  source.addEventListener("count", (event) => {
    $("live-count").textContent = JSON.parse(event.data).count;
    $("live-status").textContent = "live, updated " + new Date().toLocaleTimeString();
  });
  source.onerror = () => { $("live-status").textContent = "stream interrupted, reconnecting…"; };
}

$("watch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const tenant = $("watch-tenant").value.trim();
  if (tenant) watch(tenant);
});

// ---- presence ----------------------------------------------------------------

// The page joins a key's presence over a WebSocket (so it counts itself) and
// shows the number the server pushes; Join again on another key leaves the
// first. It does not reconnect by itself: a closed socket says why.
let presence = null;

function leavePresence() {
  if (presence) {
    presence.onclose = null;
    presence.close();
    presence = null;
  }
  $("presence-button").textContent = "Join";
}

function joinPresence(tenant, key) {
  leavePresence();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + "/presence/" + encodeURIComponent(tenant) + "/" + encodeURIComponent(key);
  $("presence-count").textContent = "–";
  $("presence-label").textContent = tenant + " / " + key;
  $("presence-status").textContent = "connecting…";
  const socket = new WebSocket(url);
  presence = socket;
  $("presence-button").textContent = "Leave";
  socket.onmessage = (event) => {
    $("presence-count").textContent = JSON.parse(event.data).count;
    $("presence-status").textContent = "joined, updated " + new Date().toLocaleTimeString();
  };
  socket.onclose = (event) => {
    if (presence !== socket) return;
    presence = null;
    $("presence-button").textContent = "Join";
    $("presence-status").textContent = "closed (" + event.code + (event.reason ? ": " + event.reason : "") + ")";
    $("presence-status").dataset.closeCode = event.code;
  };
}

$("presence-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (presence) {
    leavePresence();
    $("presence-status").textContent = "left";
    return;
  }
  const tenant = $("presence-tenant").value.trim();
  const key = $("presence-key").value.trim();
  if (tenant && key) joinPresence(tenant, key);
});

// ---- writes ----------------------------------------------------------------

async function postItems(items) {
  const response = await fetch("/items", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(items),
  });
  let message = "";
  try { message = (await response.json()).message; } catch (e) { /* not JSON */ }
  return { ok: response.ok, status: response.status, message };
}

function showResult(el, ok, text) {
  el.className = "result " + (ok ? "ok" : "bad");
  el.textContent = text;
}

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const tenant = $("add-tenant").value.trim();
  const ids = $("add-ids").value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
  if (!tenant || ids.length === 0) return showResult($("add-result"), false, "need a tenant and at least one id");
  $("add-button").disabled = true;
  try {
    const r = await postItems(ids.map((id) => ({ id, tenant })));
    showResult($("add-result"), r.ok, r.ok ? "added " + ids.length + " item(s)" : r.status + ": " + r.message);
  } catch (e) {
    showResult($("add-result"), false, "failed: " + e.message);
  } finally {
    $("add-button").disabled = false;
  }
});

// A short, bounded load from the browser: LOAD_REQUESTS requests, at most
// LOAD_PARALLEL at a time, and nothing new starts after LOAD_MAX_MS.
const LOAD_REQUESTS = 200, LOAD_PARALLEL = 8, LOAD_MAX_MS = 30000;

async function runLoad() {
  const button = $("load-button"), result = $("load-result");
  button.disabled = true;
  showResult(result, true, "running…");
  const run = Math.random().toString(36).slice(2, 8);
  const started = performance.now();
  let next = 0, ok = 0, failed = 0, items = 0;
  async function worker() {
    while (next < LOAD_REQUESTS && performance.now() - started < LOAD_MAX_MS) {
      const n = next++;
      const size = 1 + Math.floor(Math.random() * 10);
      const batch = [];
      for (let i = 0; i < size; i++) batch.push({ id: run + "-" + n + "-" + i, tenant: "load" });
      try {
        const r = await postItems(batch);
        if (r.ok) { ok++; items += size; } else { failed++; }
      } catch (e) { failed++; }
    }
  }
  await Promise.all(Array.from({ length: LOAD_PARALLEL }, worker));
  const seconds = (performance.now() - started) / 1000;
  showResult(result, failed === 0,
    ok + " ok, " + failed + " failed, " + items + " items in " + seconds.toFixed(1) + " s (" +
    Math.round(items / seconds) + " items/s)");
  result.dataset.ok = ok;
  result.dataset.failed = failed;
  result.dataset.items = items;
  button.disabled = false;
}

$("load-button").addEventListener("click", runLoad);

watch($("watch-tenant").value.trim());
poll();
