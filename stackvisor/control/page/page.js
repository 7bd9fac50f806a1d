// The status page: the stack's status once, then live through /v1/events (server-sent
// events). Nothing here polls: a change of state refreshes the table from the event, and
// CPU and memory arrive as `resources` events the server pushes every few seconds.
"use strict";

const TONES = {
  healthy: "ok", running: "ok", completed: "off",
  pending: "busy", starting: "busy", stopping: "busy",
  backoff: "warn", restarting: "warn", unhealthy: "warn",
  failed: "bad", stopped: "off", exited: "off", idle: "idle", scheduled: "idle",
};
const SVG = "http://www.w3.org/2000/svg";
const page = {
  services: new Map(), // name -> the service's status, kept up to date by events
  order: [], // start order, as the status lists them
  cpu: new Map(), // name -> [cpu seconds, time] of the last sample, for a percentage
  seen: new Set(), // events already applied (a reconnect replays the history)
  conflicts: [],
  refresh: null, // a pending refresh of the status after events
  logs: null, // the AbortController of the log being followed
};
const $ = (id) => document.getElementById(id);

function csrf() {
  // The `stackvisor ui` server sets it beside the session; the control socket needs none.
  const match = document.cookie.match(/(?:^|; )sv_csrf_\d+=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function getJSON(path) {
  const answer = await fetch(path, { headers: { Accept: "application/json" } });
  if (!answer.ok) throw new Error(`${path}: ${answer.status}`);
  return answer.json();
}

async function post(path, body) {
  const answer = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body || {}),
  });
  if (!answer.ok) {
    let why = `${answer.status}`;
    try { const data = await answer.json(); why = data.message || data.error || why; } catch (_) { /* text */ }
    showBanner(`${path}: ${why}`, "action");
  }
  return answer.ok;
}

function showBanner(text, cause) {
  const banner = $("banner");
  banner.textContent = text;
  banner.dataset.cause = cause;
  banner.hidden = !text;
}

function ago(seconds) {
  if (seconds == null || seconds < 0) return "";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function cell(row, label, text, cls) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (cls) td.className = cls;
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function actionButton(name, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = action[0].toUpperCase() + action.slice(1);
  button.setAttribute("aria-label", `${button.textContent} ${name}`);
  button.dataset.action = action;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try { await post(`/v1/services/${encodeURIComponent(name)}/${action}`); } finally { button.disabled = false; }
  });
  return button;
}

function renderRow(svc) {
  let row = document.querySelector(`#services tr[data-service="${CSS.escape(svc.name)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.service = svc.name;
  }
  // The buttons stay as they are (a resources event redraws every row every few seconds):
  // one that has the keyboard's focus keeps it, one waiting for its answer stays disabled.
  const kept = row.querySelector("td.actions");
  for (const old of [...row.children]) if (old !== kept) old.remove();
  const cells = document.createDocumentFragment();
  cell(cells, "Service", svc.name, "name");
  const state = cell(cells, "State", "");
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.dataset.tone = TONES[svc.state] || "off";
  badge.textContent = svc.state;
  state.appendChild(badge);
  cell(cells, "PID", svc.pid ?? "", "num pid");
  const port = cell(cells, "Port", svc.port ?? "", "num");
  if (svc.requested_port != null && svc.requested_port !== svc.port) {
    const was = document.createElement("span");
    was.className = "was";
    was.textContent = ` (asked ${svc.requested_port})`;
    port.appendChild(was);
  }
  const up = svc.started_at && svc.pid ? Date.now() / 1000 - svc.started_at : null;
  cell(cells, "Uptime", ago(up), "num uptime");
  cell(cells, "Restarts", svc.restarts ?? 0, "num");
  const health = svc.health ? `${svc.health}${svc.health_reason ? `: ${svc.health_reason}` : ""}` : "";
  cell(cells, "Health", health || (svc.reason || ""), "reason");
  const used = svc.resources;
  cell(cells, "CPU", used && svc.cpu_percent != null ? `${svc.cpu_percent.toFixed(1)}%` : "", "num");
  cell(cells, "Memory", used ? bytes(used.memory_bytes) : "", "num");
  if (kept) {
    row.insertBefore(cells, kept);
  } else {
    row.appendChild(cells);
    const actions = cell(row, "Actions", "", "actions");
    for (const action of ["start", "stop", "restart"]) actions.appendChild(actionButton(svc.name, action));
  }
  return row;
}

function groupRow(namespace) {
  const shown = [...document.querySelectorAll("#services tr.group")].find((r) => r.dataset.namespace === namespace);
  if (shown) return shown;
  const row = document.createElement("tr");
  row.dataset.namespace = namespace;
  row.className = "group";
  const th = document.createElement("th");
  th.colSpan = 10;
  th.scope = "rowgroup";
  th.textContent = namespace || "no namespace";
  row.appendChild(th);
  return row;
}

function renderTable() {
  // Grouped by namespace when the stack has any: each group in start order.
  const body = $("services").tBodies[0];
  const names = page.order.filter((n) => page.services.has(n));
  const spaces = [...new Set(names.map((n) => page.services.get(n).namespace || ""))];
  const rows = [];
  for (const space of spaces.length > 1 || spaces[0] ? spaces.sort() : [""]) {
    if (spaces.length > 1 || space) rows.push(groupRow(space));
    for (const n of names) if ((page.services.get(n).namespace || "") === space) rows.push(renderRow(page.services.get(n)));
  }
  // Only when the rows change: moving a row away and back takes the keyboard's focus.
  const same = rows.length === body.rows.length && rows.every((row, i) => body.rows[i] === row);
  if (!same) body.replaceChildren(...rows);
  body.dataset.rendered = String(names.length);
  renderGraph();
  renderLogChoices();
}

function renderGraph() {
  // Columns by depth: a service stands one column right of its deepest dependency.
  const depth = new Map();
  const visit = (name, trail) => {
    if (depth.has(name)) return depth.get(name);
    if (trail.has(name)) return 0;
    trail.add(name);
    const deps = (page.services.get(name)?.depends_on || []).filter((d) => page.services.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map((x) => visit(x, trail))) : 0;
    depth.set(name, d);
    return d;
  };
  page.order.forEach((n) => visit(n, new Set()));
  const columns = [];
  for (const name of page.order) {
    const d = depth.get(name) || 0;
    (columns[d] = columns[d] || []).push(name);
  }
  const W = 150, H = 34, GAPX = 60, GAPY = 14, PAD = 12;
  const place = new Map();
  columns.forEach((names, c) => names.forEach((n, r) => place.set(n, [PAD + c * (W + GAPX), PAD + r * (H + GAPY)])));
  const svg = $("graph");
  const width = PAD * 2 + columns.length * (W + GAPX) - GAPX;
  const height = PAD * 2 + Math.max(1, ...columns.map((c) => c.length)) * (H + GAPY) - GAPY;
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 0)} ${height}`);
  svg.setAttribute("width", Math.max(width, 0));
  svg.setAttribute("height", height);
  const make = (tag, attrs) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  };
  const defs = make("defs", {});
  const marker = make("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.appendChild(make("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
  defs.appendChild(marker);
  const parts = [defs];
  for (const name of page.order) {
    const [x, y] = place.get(name);
    for (const dep of page.services.get(name).depends_on || []) {
      if (!place.has(dep)) continue;
      const [dx, dy] = place.get(dep);
      parts.push(make("path", { class: "edge", "marker-end": "url(#arrow)",
        d: `M ${dx + W} ${dy + H / 2} C ${dx + W + GAPX / 2} ${dy + H / 2}, ${x - GAPX / 2} ${y + H / 2}, ${x} ${y + H / 2}` }));
    }
  }
  for (const name of page.order) {
    const [x, y] = place.get(name);
    const svc = page.services.get(name);
    const group = make("g", { class: "node", "data-tone": TONES[svc.state] || "off", "data-service": name });
    const title = make("title", {});
    title.textContent = `${name}: ${svc.state}`;
    group.appendChild(title);
    group.appendChild(make("rect", { x, y, width: W, height: H, rx: 6 }));
    const label = make("text", { x: x + 10, y: y + H / 2 + 4 });
    label.textContent = name.length > 18 ? `${name.slice(0, 17)}…` : name;
    group.appendChild(label);
    parts.push(group);
  }
  svg.replaceChildren(...parts);
}

function renderConflicts() {
  const table = $("conflicts");
  const rows = page.conflicts.map((e) => {
    const row = document.createElement("tr");
    const d = e.data;
    cell(row, "Time", new Date(e.ts * 1000).toLocaleTimeString());
    cell(row, "Service", e.service || "");
    cell(row, "Port", d.new_port && d.new_port !== d.port ? `${d.port} → ${d.new_port}` : `${d.port ?? ""}`);
    cell(row, "Held by", d.holder_pid ? `pid ${d.holder_pid} (${d.holder_name || "?"}, ${d.holder_user || "?"})` : "");
    cell(row, "Level", d.level);
    cell(row, "Action", d.action);
    cell(row, "Outcome", d.outcome, "reason");
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
  table.hidden = rows.length === 0;
  $("no-conflicts").hidden = rows.length !== 0;
}

function renderLogChoices() {
  const select = $("log-service");
  const current = select.value;
  const names = page.order.filter((n) => page.services.has(n));
  if ([...select.options].map((o) => o.value).join() === names.join()) return;
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  if (names.includes(current)) select.value = current;
  if (select.value !== current) followLog(select.value);
}

async function followLog(name) {
  if (page.logs) page.logs.abort();
  const log = $("log");
  log.textContent = "";
  if (!name) return;
  const controller = new AbortController();
  page.logs = controller;
  try {
    const answer = await fetch(`/v1/services/${encodeURIComponent(name)}/logs?follow=true&tail=200`,
      { signal: controller.signal });
    const reader = answer.body.getReader();
    const text = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(text.decode(value, { stream: true }));
      const lines = log.textContent.split("\n");
      if (lines.length > 2000) log.textContent = lines.slice(-1500).join("\n");
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
  } catch (err) {
    if (err.name !== "AbortError") log.append(`\n[log stream ended: ${err.message}]\n`);
  }
}

function applyStatus(status) {
  $("stack-name").textContent = status.name || "stackvisor";
  document.title = `${status.name || "stack"} · stackvisor`;
  const facts = $("stack-facts");
  facts.textContent = `${status.file.split("/").pop()} · supervisor pid ${status.pid} · tracked by ${status.tracking}`;
  facts.title = status.file;
  page.order = status.services.map((s) => s.name);
  const known = new Set(page.order);
  for (const name of [...page.services.keys()]) if (!known.has(name)) page.services.delete(name);
  for (const svc of status.services) {
    const old = page.services.get(svc.name) || {};
    page.services.set(svc.name, { ...svc, health_reason: old.health_reason, cpu_percent: old.cpu_percent,
      resources: svc.resources || old.resources });
  }
  if (status.reload && !status.reload.ok) showBanner(`reload failed, nothing changed:\n${status.reload.error}`, "reload");
  else if ($("banner").dataset.cause === "reload") showBanner("", "");
  renderTable();
}

function scheduleRefresh() {
  if (page.refresh) return;
  page.refresh = setTimeout(async () => {
    page.refresh = null;
    try { applyStatus(await getJSON("/v1/status")); } catch (_) { /* the next event tries again */ }
  }, 150);
}

function onEvent(raw) {
  const event = JSON.parse(raw.data);
  const key = `${event.ts}/${event.seq}/${event.kind}`;
  if (page.seen.has(key)) return;
  page.seen.add(key);
  const svc = event.service ? page.services.get(event.service) : null;
  const d = event.data || {};
  switch (event.kind) {
    case "state":
      if (svc) {
        Object.assign(svc, { state: d.new, reason: d.reason, pid: d.pid ?? svc.pid });
        if (d.port != null) svc.port = d.port;
        if (d.new === "starting") svc.started_at = event.ts;
        renderRow(svc);
        renderGraph();
      }
      scheduleRefresh();
      break;
    case "health":
      if (svc) { svc.health = d.health; svc.health_reason = d.output; renderRow(svc); }
      break;
    case "port_conflict":
      page.conflicts.push(event);
      renderConflicts();
      scheduleRefresh();
      break;
    case "reload_failed":
      showBanner(`reload failed, nothing changed:\n${d.error}`, "reload");
      break;
    case "reload":
      if ($("banner").dataset.cause === "reload") showBanner("", "");
      scheduleRefresh();
      break;
    case "stack":
      if (d.event === "down") showBanner(`the stack went down${d.reason ? `: ${d.reason}` : ""}`, "stack");
      break;
    default:
      break;
  }
}

function onResources(raw) {
  const sample = JSON.parse(raw.data);
  for (const [name, used] of Object.entries(sample.services || {})) {
    const svc = page.services.get(name);
    if (!svc) continue;
    const last = page.cpu.get(name);
    if (used && last && sample.ts > last[1]) svc.cpu_percent = (100 * (used.cpu_seconds - last[0])) / (sample.ts - last[1]);
    if (used) page.cpu.set(name, [used.cpu_seconds, sample.ts]);
    svc.resources = used;
    renderRow(svc);
  }
}

function connect(since) {
  const link = $("link");
  const source = new EventSource(`/v1/events?since=${since}&resources=2`);
  const kinds = ["state", "health", "port_conflict", "reload", "reload_failed", "stack"];
  for (const kind of kinds) source.addEventListener(kind, onEvent);
  source.addEventListener("resources", onResources);
  source.onopen = () => { link.dataset.state = "live"; link.textContent = "live"; };
  source.onerror = () => { link.dataset.state = "lost"; link.textContent = "connection lost, retrying…"; };
}

async function start() {
  $("stack-up").addEventListener("click", () => post("/v1/up"));
  $("stack-restart").addEventListener("click", () => post("/v1/restart"));
  $("stack-stop").addEventListener("click", () => {
    if (window.confirm("Stop the whole stack?")) post("/v1/stop");
  });
  $("log-service").addEventListener("change", (e) => followLog(e.target.value));
  const status = await getJSON("/v1/status?resources=true");
  applyStatus(status);
  connect(status.started_at);
  // Uptimes tick here; nothing is asked of the server for them.
  setInterval(() => {
    for (const svc of page.services.values()) {
      const row = document.querySelector(`#services tr[data-service="${CSS.escape(svc.name)}"] td.uptime`);
      if (row) row.textContent = ago(svc.started_at && svc.pid ? Date.now() / 1000 - svc.started_at : null);
    }
  }, 1000);
  performance.mark("table-rendered");
}

start().catch((err) => showBanner(`cannot read the stack's status: ${err.message}`, "load"));
