// The Sessions report: list + dashboard at /sessions, one session at /sessions/<id>.
// Plain DOM, no framework; every value from the API is set as text, never as HTML.

import { drawChart } from "./chart.js";

const PAGE = new URL("..", import.meta.url).pathname; // "/sessions/"
const API = new URL("../../api/sessions", import.meta.url).pathname; // "/api/sessions"
const TOKEN_KEY = "sessions-report-token";
const RANGES = { "1h": 3_600_000, "6h": 21_600_000, "24h": 86_400_000, "7d": 604_800_000, "30d": 2_592_000_000 };
const RANGE_NAMES = { "1h": "the last hour", "6h": "the last 6 hours", "24h": "the last 24 hours", "7d": "the last 7 days", "30d": "the last 30 days" };
const REASONS = { ended: "ended", timeout: "timeout", max_duration: "max duration" };
const PAGE_SIZE = 100;
const LIST_REFRESH_MS = 30_000;
const SESSION_REFRESH_MS = 10_000;

const $ = (selector, root = document) => root.querySelector(selector);
const state = { skewMs: 0, limit: PAGE_SIZE, timer: null, projects: new Set(), view: null };

// -- small helpers -------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const now = () => Date.now() + state.skewMs;

function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const pad = (v) => String(v).padStart(2, "0");
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${pad(mm)}m`;
  if (mm) return `${mm}m ${pad(ss)}s`;
  return `${ss}s`;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const fullFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short" });
const tickTimeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const tickDateFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const tickMonthFmt = new Intl.DateTimeFormat(undefined, { month: "short", year: "numeric" });

function formatStep(ms) {
  const plural = (n, unit) => `${n === 1 ? "" : `${n} `}${unit}${n === 1 ? "" : "s"}`;
  if (ms % 86_400_000 === 0) return plural(ms / 86_400_000, "day");
  if (ms % 3_600_000 === 0) return plural(ms / 3_600_000, "hour");
  return ms === 60_000 ? "minute" : `${Math.round(ms / 60_000)} minutes`;
}

function sameDay(a, b) {
  const x = new Date(a), y = new Date(b);
  return x.getFullYear() === y.getFullYear() && x.getMonth() === y.getMonth() && x.getDate() === y.getDate();
}

function formatWhen(ms) {
  return sameDay(ms, now()) ? timeFmt.format(ms) : dateTimeFmt.format(ms);
}

function formatAgo(ms) {
  const s = Math.max(0, Math.round((now() - ms) / 1000));
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function formatNumber(value, digits = 0) {
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

// A session id is unique within its project only: the link names both.
function sessionUrl(id, project) {
  return PAGE + encodeURIComponent(id) + (project ? `?project=${encodeURIComponent(project)}` : "");
}

// -- API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, params = {}) {
  const url = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const sentAt = Date.now();
  const response = await fetch(url, { headers, cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) throw new ApiError(response.status, body);
  if (body && body.now) {
    // the server's clock, so durations tick from its time, not this machine's
    state.skewMs = Date.parse(body.now) - (sentAt + Date.now()) / 2;
  }
  return body;
}

function showNotice(text) {
  const notice = $("#notice");
  notice.textContent = text || "";
  notice.hidden = !text;
}

function handleError(error) {
  if (error instanceof ApiError && error.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignin();
    return;
  }
  if (error instanceof ApiError && error.status === 429) {
    showNotice(`${error.message} The report tries again with the next refresh.`);
    return;
  }
  showNotice(error instanceof ApiError ? error.message : `The report cannot reach the gateway (${error.message}).`);
}

function showSignin() {
  $("#signin").hidden = false;
  $("#list-view").hidden = true;
  $("#session-view").hidden = true;
  $("#token").focus();
}

function markUpdated() {
  $("#updated").textContent = `Updated ${timeFmt.format(Date.now())}`;
}

// -- ticking durations -------------------------------------------------------------------

function tick() {
  for (const node of document.querySelectorAll("[data-tick-start]")) {
    node.textContent = formatDuration(now() - Number(node.dataset.tickStart));
  }
  for (const node of document.querySelectorAll("[data-ago]")) {
    node.textContent = formatAgo(Number(node.dataset.ago));
  }
}

function durationCell(session) {
  const startMs = Date.parse(session.start);
  if (session.online) {
    return h("span", { class: "duration live", dataset: { tickStart: startMs } }, formatDuration(now() - startMs));
  }
  return h("span", { class: "duration" }, formatDuration(session.duration_ms));
}

function statusPill(session) {
  if (session.online) return h("span", { class: "pill online", title: "open: still receiving events" }, h("span", { class: "dot" }), "online");
  const reason = REASONS[session.close_reason] || session.close_reason || "closed";
  return h("span", { class: `pill closed reason-${session.close_reason || "closed"}`, title: `closed: ${reason}` }, reason);
}

function userBlock(session, tag = "span") {
  if (!session.user_id && !session.user_name) return h(tag, { class: "user anonymous" }, "anonymous");
  const name = session.user_name || session.user_id;
  return h(tag, { class: "user" },
    h("span", { class: "user-name" }, name),
    session.user_name && session.user_id && session.user_name !== session.user_id ? h("span", { class: "user-id" }, session.user_id) : null);
}

// -- filters ---------------------------------------------------------------------------

function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 19);
}

function readFilters() {
  const q = new URLSearchParams(location.search);
  const range = q.get("range") || (q.get("since") || q.get("until") ? "custom" : "24h");
  return {
    project: q.get("project") || "",
    user: q.get("user") || "",
    range: range in RANGES || range === "custom" ? range : "24h",
    since: q.get("since") || "",
    until: q.get("until") || "",
    active: q.get("active") === "true",
  };
}

function fillForm(f) {
  const form = $("#filters");
  form.project.value = f.project;
  form.user.value = f.user;
  form.range.value = f.range;
  form.since.value = f.since ? toLocalInput(Date.parse(f.since)) : "";
  form.until.value = f.until ? toLocalInput(Date.parse(f.until)) : "";
  form.active.checked = f.active;
  for (const node of form.querySelectorAll(".custom-range")) node.hidden = f.range !== "custom";
}

function formFilters() {
  const form = $("#filters");
  const local = (value) => (value ? new Date(value).toISOString() : "");
  return {
    project: form.project.value.trim(),
    user: form.user.value.trim(),
    range: form.range.value,
    since: form.range.value === "custom" ? local(form.since.value) : "",
    until: form.range.value === "custom" ? local(form.until.value) : "",
    active: form.active.checked,
  };
}

function filtersToSearch(f) {
  const q = new URLSearchParams();
  if (f.project) q.set("project", f.project);
  if (f.user) q.set("user", f.user);
  if (f.range !== "24h") q.set("range", f.range);
  if (f.range === "custom") {
    if (f.since) q.set("since", f.since);
    if (f.until) q.set("until", f.until);
  }
  if (f.active) q.set("active", "true");
  const text = q.toString();
  return text ? `?${text}` : "";
}

function timeRange(f) {
  if (f.range === "custom") return { since: f.since, until: f.until };
  return { since: new Date(now() - RANGES[f.range]).toISOString(), until: "" };
}

function rangeText(f) {
  if (f.range !== "custom") return RANGE_NAMES[f.range];
  const from = f.since ? fullFmt.format(Date.parse(f.since)) : "the start of the history";
  const to = f.until ? fullFmt.format(Date.parse(f.until)) : "now";
  return `${from} – ${to}`;
}

// -- list view -------------------------------------------------------------------------

function sessionRow(session) {
  const startMs = Date.parse(session.start);
  const link = h("a", { href: sessionUrl(session.session_id, session.project), class: "row-link", dataset: { nav: "" } }, userBlock(session));
  return h("tr", { class: session.online ? "is-online" : "", dataset: { sessionId: session.session_id }, onclick: (event) => {
    if (event.target.closest("a") || window.getSelection().toString()) return;
    navigate(sessionUrl(session.session_id, session.project));
  } },
  h("td", {}, link),
  h("td", {}, statusPill(session)),
  h("td", { title: fullFmt.format(startMs) }, h("span", { class: "when" }, formatWhen(startMs)), h("span", { class: "ago", dataset: { ago: startMs } }, formatAgo(startMs))),
  h("td", { class: "num" }, durationCell(session)),
  h("td", { class: "num" }, formatNumber(session.event_count)),
  h("td", { class: "num" }, session.error_count ? h("span", { class: "badge error" }, formatNumber(session.error_count)) : h("span", { class: "muted" }, "–")),
  h("td", {}, h("span", { class: "chip" }, session.project)),
  h("td", {}, h("code", { class: "sid", title: session.session_id }, session.session_id.length > 14 ? `${session.session_id.slice(0, 12)}…` : session.session_id)));
}

function renderList(result, f) {
  const body = $("#sessions tbody");
  body.replaceChildren(...result.sessions.map(sessionRow));
  for (const s of result.sessions) state.projects.add(s.project);
  $("#projects").replaceChildren(...[...state.projects].sort().map((p) => h("option", { value: p })));
  const online = result.sessions.filter((s) => s.online).length;
  $("#list-count").textContent = result.count ? `${formatNumber(result.count)}${result.has_more ? "+" : ""}` : "";
  const scope = [f.active ? "online, " : "", `started in ${rangeText(f)}`, online && !f.active ? ` · ${online} online` : "", " · newest first"];
  $("#list-scope").textContent = scope.join("");
  $("#list-empty").hidden = result.count > 0;
  $("#list-foot").hidden = !result.has_more || state.limit >= 1000;
  if (result.partial) showNotice("Only the newest sessions were read (SESSIONIZER_REPORT_SCAN_LIMIT): narrow the time range to see older ones.");
}

function setTile(name, value, sub) {
  const tile = $(`[data-stat="${name}"]`);
  $("[data-value]", tile).textContent = value;
  $("[data-sub]", tile).textContent = sub;
}

function renderStats(stats, f) {
  const parts = [`${formatNumber(stats.online)} online`];
  if (stats.with_errors) parts.push(`${formatNumber(stats.with_errors)} with errors`);
  setTile("sessions", formatNumber(stats.sessions), parts.join(" · "));
  const perHour = stats.sessions_per_hour;
  setTile("per-hour", perHour > 0 && perHour < 0.1 ? "< 0.1" : formatNumber(perHour, perHour < 10 ? 1 : 0), `over ${rangeText(f)}`);
  setTile("users", formatNumber(stats.users), stats.project ? `in ${stats.project}` : "in all projects");
  setTile("avg-duration", stats.avg_duration_ms === null ? "–" : formatDuration(stats.avg_duration_ms),
    stats.closed ? `of ${formatNumber(stats.closed)} closed session${stats.closed === 1 ? "" : "s"}` : "no closed sessions yet");
  const bucketMs = stats.bucket_ms;
  const formatTick = bucketMs >= 30 * 86_400_000 ? (ms) => tickMonthFmt.format(ms)
    : bucketMs >= 86_400_000 ? (ms) => tickDateFmt.format(ms)
    : (ms) => (new Date(ms).getHours() === 0 && new Date(ms).getMinutes() === 0 ? tickDateFmt.format(ms) : tickTimeFmt.format(ms));
  const formatRange = (a, b) => `${dateTimeFmt.format(a)} – ${sameDay(a, b - 1) ? tickTimeFmt.format(b) : dateTimeFmt.format(b)}`;
  state.lastChart = () => drawChart($("#chart"), stats.series, { bucketMs, formatTick, formatRange });
  state.lastChart();
  $("#chart-note").textContent = `Per ${formatStep(bucketMs)} · all users${stats.project ? ` of ${stats.project}` : ""}, by session start` +
    (stats.partial ? " · partial: only the newest sessions were read" : "");
}

async function loadList() {
  const f = readFilters();
  const { since, until } = timeRange(f);
  try {
    const [list, stats] = await Promise.all([
      api("", { project: f.project, user: f.user, since, until, active: f.active ? "true" : "", limit: state.limit }),
      api("/stats", { project: f.project, since, until }),
    ]);
    showNotice("");
    renderList(list, f);
    renderStats(stats, f);
    markUpdated();
  } catch (error) {
    handleError(error);
  }
}

function showList() {
  state.view = "list";
  document.title = "Sessions";
  $("#session-view").hidden = true;
  $("#list-view").hidden = false;
  fillForm(readFilters());
  return loadList();
}

// -- session view ----------------------------------------------------------------------

function fact(label, ...value) {
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, ...value));
}

function valueNode(value, depth = 0) {
  if (value === null) return h("span", { class: "j-null" }, "null");
  if (typeof value === "string") return h("span", { class: "j-string" }, JSON.stringify(value));
  if (typeof value === "number") return h("span", { class: "j-number" }, String(value));
  if (typeof value === "boolean") return h("span", { class: "j-bool" }, String(value));
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  if (!entries.length) return h("span", { class: "j-empty" }, Array.isArray(value) ? "[]" : "{}");
  const summary = Array.isArray(value) ? `[${entries.length} item${entries.length === 1 ? "" : "s"}]` : `{${entries.length} key${entries.length === 1 ? "" : "s"}}`;
  return h("details", { class: "j-node", open: depth < 2 },
    h("summary", {}, summary),
    h("dl", { class: "j-entries" }, entries.map(([k, v]) => h("div", { class: "j-entry" }, h("dt", {}, String(k)), h("dd", {}, valueNode(v, depth + 1))))));
}

function dataTree(data) {
  const keys = Object.keys(data || {});
  if (!keys.length) return h("p", { class: "muted" }, "No data on this session's events.");
  return h("dl", { class: "j-entries j-root" }, keys.sort().map((k) => h("div", { class: "j-entry" }, h("dt", {}, k), h("dd", {}, valueNode(data[k], 1)))));
}

const EVENT_FIELDS = ["id", "type", "timestamp", "source", "message", "value", "partition", "offset"];

function eventDetail(event) {
  return h("dl", { class: "event-fields" }, EVENT_FIELDS.map((name) => {
    const value = event[name];
    return h("div", { class: "event-field" }, h("dt", {}, name),
      h("dd", {}, value === null || value === undefined ? h("span", { class: "muted" }, "—") : valueNode(value, 0)));
  }));
}

function eventRows(session) {
  const startMs = Date.parse(session.start);
  const rows = [];
  session.events.forEach((event, index) => {
    const t = Date.parse(event.timestamp);
    const detailRow = h("tr", { class: "event-detail", hidden: true }, h("td", { colspan: 6 }, eventDetail(event)));
    const row = h("tr", {
      class: `event-row type-${event.type === "error" ? "error" : "other"}`, tabindex: 0, "aria-expanded": "false", dataset: { eventIndex: index },
      onclick: () => toggle(), onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } },
    },
    h("td", { class: "mono", title: fullFmt.format(t) }, timeFmt.format(t)),
    h("td", { class: "mono muted" }, `+${formatDuration(t - startMs)}`),
    h("td", {}, h("span", { class: `type type-${event.type === "error" ? "error" : event.type === "session" || event.type === "sessionend" ? "lifecycle" : "other"}` }, event.type)),
    h("td", {}, event.source || h("span", { class: "muted" }, "—")),
    h("td", { class: "message" }, event.message || h("span", { class: "muted" }, "—")),
    h("td", { class: "num" }, event.value === null || event.value === undefined ? h("span", { class: "muted" }, "—") : String(event.value)));
    function toggle() {
      detailRow.hidden = !detailRow.hidden;
      row.classList.toggle("open", !detailRow.hidden);
      row.setAttribute("aria-expanded", String(!detailRow.hidden));
    }
    rows.push(row, detailRow);
  });
  return rows;
}

function renderSession(session) {
  const startMs = Date.parse(session.start);
  const endMs = Date.parse(session.end);
  const title = session.user_name || session.user_id || "Anonymous session";
  document.title = `${title} · Sessions`;
  const types = Object.entries(session.type_counts || {}).sort((a, b) => b[1] - a[1]);
  const view = $("#session-view");
  view.replaceChildren(
    h("a", { class: "back", href: PAGE.replace(/\/$/, "") + (state.listSearch || ""), dataset: { nav: "" } }, "← All sessions"),
    h("div", { class: "session-head" },
      h("div", {},
        h("h1", {}, title, " ", statusPill(session)),
        h("div", { class: "muted" }, session.user_name && session.user_id && session.user_name !== session.user_id ? `${session.user_id} · ` : "", "session ", h("code", {}, session.session_id))),
      h("div", { class: "session-duration" },
        h("div", { class: "tile-label" }, session.online ? "Online for" : "Duration"),
        h("div", { class: "big" }, durationCell(session)))),
    h("section", { class: "card" },
      h("dl", { class: "facts" },
        fact("Project", h("span", { class: "chip" }, session.project)),
        fact("Started", fullFmt.format(startMs)),
        fact(session.online ? "Last activity" : "Ended", fullFmt.format(endMs)),
        fact("Close reason", session.online ? h("span", { class: "muted" }, "— still open") : REASONS[session.close_reason] || session.close_reason),
        fact("Events", formatNumber(session.event_count)),
        fact("Errors", session.error_count ? h("span", { class: "badge error" }, formatNumber(session.error_count)) : "0"),
        fact("Heartbeats", formatNumber(session.heartbeat_count)),
        fact("Duplicates", formatNumber(session.duplicate_events)),
        fact("Revision", String(session.revision))),
      types.length ? h("div", { class: "type-counts" }, h("span", { class: "muted small" }, "Event types"),
        types.map(([type, count]) => h("span", { class: `chip type-chip${type === "error" ? " error" : ""}` }, `${type} `, h("b", {}, formatNumber(count))))) : null),
    h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("h2", {}, "Events ", h("span", { class: "count" }, formatNumber(session.events.length))),
        h("span", { class: "muted small" }, "Click an event to see its fields · heartbeats are counted, not listed")),
      session.events_truncated ? h("p", { class: "notice inline" }, `Only the first ${session.events.length} events are listed (SESSIONIZER_MAX_EVENTS_PER_SESSION).`) : null,
      session.events.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "events", id: "events" },
          h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Since start"), h("th", {}, "Type"), h("th", {}, "Source"), h("th", {}, "Message"), h("th", { class: "num" }, "Value"))),
          h("tbody", {}, eventRows(session))))
        : h("div", { class: "empty" }, "No events listed (only heartbeats so far).")),
    h("section", { class: "card", id: "session-data" },
      h("div", { class: "card-head" }, h("h2", {}, "Session data"), h("span", { class: "muted small" }, "Merged from the events' data; per key the earliest value")),
      dataTree(session.data)));
  view.hidden = false;
}

async function loadSession(id, { quiet = false } = {}) {
  try {
    const project = new URLSearchParams(location.search).get("project");
    const { session } = await api(`/${encodeURIComponent(id)}`, { project });
    showNotice("");
    const open = [...document.querySelectorAll("#events tr.event-row.open")].map((r) => r.dataset.eventIndex);
    renderSession(session);
    for (const index of open) $(`#events tr.event-row[data-event-index="${index}"]`)?.click();
    markUpdated();
    return session;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404 && !quiet) {
      $("#session-view").replaceChildren(
        h("a", { class: "back", href: PAGE.replace(/\/$/, ""), dataset: { nav: "" } }, "← All sessions"),
        h("section", { class: "card empty" }, h("h2", {}, "Session not found"), h("p", { class: "muted" }, error.message)));
      $("#session-view").hidden = false;
      return null;
    }
    handleError(error);
    return null;
  }
}

function showSession(id) {
  state.view = "session";
  $("#list-view").hidden = true;
  $("#session-view").replaceChildren(h("p", { class: "muted loading" }, "Loading session…"));
  $("#session-view").hidden = false;
  window.scrollTo(0, 0);
  return loadSession(id);
}

// -- routing -----------------------------------------------------------------------------

function currentSessionId() {
  const path = location.pathname;
  if (!path.startsWith(PAGE)) return null;
  const rest = path.slice(PAGE.length);
  return rest ? decodeURIComponent(rest) : null;
}

function route() {
  $("#signin").hidden = true;
  const id = currentSessionId();
  clearInterval(state.timer);
  if (id) {
    showSession(id);
    state.timer = setInterval(() => {
      if (!document.hidden && $("#session-view .pill.online")) loadSession(id, { quiet: true });
    }, SESSION_REFRESH_MS);
  } else {
    state.listSearch = location.search;
    showList();
    state.timer = setInterval(() => { if (!document.hidden) loadList(); }, LIST_REFRESH_MS);
  }
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

function start() {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
  });
  window.addEventListener("popstate", route);
  const form = $("#filters");
  const apply = () => {
    state.limit = PAGE_SIZE;
    history.replaceState(null, "", PAGE.replace(/\/$/, "") + filtersToSearch(formFilters()));
    state.listSearch = location.search;
    loadList();
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  form.range.addEventListener("change", () => {
    const custom = form.range.value === "custom";
    for (const node of form.querySelectorAll(".custom-range")) node.hidden = !custom;
    if (custom && !form.since.value) form.since.value = toLocalInput(now() - RANGES["24h"]);
    apply();
  });
  for (const name of ["active", "since", "until"]) form[name].addEventListener("change", apply);
  $("#reset").addEventListener("click", () => { fillForm({ project: "", user: "", range: "24h", since: "", until: "", active: false }); apply(); });
  $("#more").addEventListener("click", () => { state.limit = Math.min(1000, state.limit + PAGE_SIZE); loadList(); });
  $("#refresh").addEventListener("click", () => (state.view === "session" ? loadSession(currentSessionId()) : loadList()));
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    route();
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => state.lastChart?.(), 150); });
  setInterval(tick, 1000);
  route();
}

start();
