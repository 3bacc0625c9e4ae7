// The built-in dashboard (GET /dashboard): no framework, no build step.
// The API key lives in sessionStorage only and travels only in the
// Authorization header; every piece of user text is set as textContent.

const KEY_STORAGE = "llm-feedback.dashboard.key";
const API = "/api/v1/llm/feedback";
const KINDS = ["completions", "responses"];
const PAGE_SIZE = 20;
// A page of entries scans at most this many list pages when the model or
// comment filter (applied here, the list API has only `rating`) skips many.
const MAX_SCANS_PER_PAGE = 25;
const Z = 1.959964;
const DAY_MS = 86400000;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let generation = 0; // bumps on every reload: late answers of older loads are dropped

function key() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${key()}` }, cache: "no-store" });
  } catch {
    throw new ApiError(0, "The service cannot be reached. Check the connection and retry.");
  }
  if (response.ok) return response;
  let message = `The service answered ${response.status}.`;
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") message = body.error.message;
  } catch {
    // not JSON: keep the generic message
  }
  throw new ApiError(response.status, message);
}

async function apiJson(path) {
  return (await api(path)).json();
}

// ---- states -------------------------------------------------------------

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  generation += 1;
  document.body.removeAttribute("aria-busy");
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("key-panel").hidden = false;
  const note = $("key-message");
  note.textContent = message || "";
  note.hidden = !message;
  const input = $("api-key");
  input.value = "";
  input.focus();
}

function showBoard() {
  $("key-panel").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
}

function status(text, kind) {
  const note = $("board-message");
  note.textContent = text;
  note.className = `message ${kind || ""}`;
}

// Shows an error of a load; a 401 asks for the key again.
function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    askForKey(`That key was refused (401): ${error.message} Enter a valid tenant API key.`);
    return;
  }
  if (error instanceof ApiError && error.status === 503) {
    status(`The service is unavailable right now (503): ${error.message} Use Refresh to retry.`, "error");
    return;
  }
  if (error instanceof ApiError && error.status === 403) {
    askForKey(`That credential may not read statistics (403): ${error.message} Use a tenant API key.`);
    return;
  }
  status(error instanceof ApiError ? error.message : "Something went wrong; use Refresh to retry.", "error");
}

// ---- statistics ---------------------------------------------------------

function wilson(up, n) {
  if (n === 0) return null;
  const p = up / n;
  const z2 = Z * Z;
  const d = 1 + z2 / n;
  const c = (p + z2 / (2 * n)) / d;
  const h = (Z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / d;
  return [Math.max(0, Math.min(c - h, p)), Math.min(1, Math.max(c + h, p))];
}

function emptyCounts() {
  return { total: 0, thumbs_up: 0, thumbs_down: 0, unrated: 0, with_description: 0 };
}

function addCounts(into, group) {
  for (const field of Object.keys(into)) into[field] += group[field];
}

function filters() {
  return {
    kind: $("f-kind").value,
    days: Number($("f-days").value),
    model: $("f-model").value,
    modelChosen: $("f-model").selectedIndex > 0,
    rating: $("f-rating").value,
    comment: $("f-comment").value,
  };
}

function iso(ms) {
  return new Date(ms).toISOString();
}

function fmtPct(value) {
  return value === null ? "–" : `${(value * 100).toFixed(1)} %`;
}

// Counts per model and per (model, day) of the chosen kinds, summed over kinds.
async function loadStats(f, mine) {
  const to = Date.now();
  const from = to - f.days * DAY_MS;
  const kinds = f.kind ? [f.kind] : KINDS;
  const range = `&from=${encodeURIComponent(iso(from))}&to=${encodeURIComponent(iso(to))}`;
  const answers = await Promise.all(
    kinds.flatMap((kind) => [
      apiJson(`${API}/stats?kind=${kind}&group_by=model${range}`),
      apiJson(`${API}/stats?kind=${kind}&group_by=model%2Cday${range}`),
    ]),
  );
  if (mine !== generation) return null;
  const models = new Map();
  const days = new Map();
  answers.forEach((answer, index) => {
    const target = index % 2 === 0 ? models : days;
    for (const group of answer.groups) {
      const k = index % 2 === 0 ? group.model : `${group.model}\u0000${group.day}`;
      if (!target.has(k)) target.set(k, { model: group.model, day: group.day, counts: emptyCounts() });
      addCounts(target.get(k).counts, group);
    }
  });
  return { from, to, models, days };
}

function renderModelOptions(stats) {
  const select = $("f-model");
  const chosen = select.selectedIndex > 0 ? select.value : null;
  const names = [...stats.models.keys()].sort();
  if (chosen !== null && !names.includes(chosen)) names.push(chosen);
  while (select.options.length > 1) select.remove(1);
  for (const name of names) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name === "" ? "(no model)" : name;
    select.append(option);
  }
  if (chosen !== null) select.value = chosen;
}

function modelLabel(name) {
  return name === "" ? "(no model)" : name;
}

function renderTotals(stats, f) {
  const body = $("totals").querySelector("tbody");
  body.replaceChildren();
  const rows = [...stats.models.values()]
    .filter((row) => !f.modelChosen || row.model === f.model)
    .sort((a, b) => (a.model < b.model ? -1 : a.model > b.model ? 1 : 0));
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 8;
    td.className = "empty";
    td.textContent = "No feedback in this period yet. Entries appear here as soon as they are recorded.";
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const row of rows) {
    const c = row.counts;
    const rated = c.thumbs_up + c.thumbs_down;
    const sat = rated ? c.thumbs_up / rated : null;
    const ci = wilson(c.thumbs_up, rated);
    const tr = document.createElement("tr");
    tr.dataset.model = row.model;
    const cells = [
      ["model", modelLabel(row.model)],
      ["total", String(c.total)],
      ["thumbs_up", String(c.thumbs_up)],
      ["thumbs_down", String(c.thumbs_down)],
      ["unrated", String(c.unrated)],
      ["with_description", String(c.with_description)],
      ["satisfaction", fmtPct(sat)],
      ["ci95", ci ? `${fmtPct(ci[0])} – ${fmtPct(ci[1])}` : "–"],
    ];
    cells.forEach(([field, text], index) => {
      const cell = document.createElement(index === 0 ? "th" : "td");
      if (index === 0) cell.scope = "row";
      cell.dataset.field = field;
      cell.textContent = text;
      tr.append(cell);
    });
    body.append(tr);
  }
}

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [attribute, value] of Object.entries(attributes || {})) element.setAttribute(attribute, String(value));
  return element;
}

function renderCharts(stats, f) {
  const root = $("charts");
  root.replaceChildren();
  const perModel = new Map();
  for (const row of stats.days.values()) {
    if (f.modelChosen && row.model !== f.model) continue;
    if (!perModel.has(row.model)) perModel.set(row.model, []);
    perModel.get(row.model).push(row);
  }
  if (perModel.size === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Nothing to chart yet: no feedback in this period.";
    root.append(empty);
    return;
  }
  const firstDay = Math.floor(stats.from / DAY_MS);
  const lastDay = Math.floor(stats.to / DAY_MS);
  const span = Math.max(1, lastDay - firstDay);
  const W = 340, H = 150, L = 34, R = 8, T = 8, B = 22;
  const x = (day) => L + ((day - firstDay) / span) * (W - L - R);
  const y = (value) => T + (1 - value) * (H - T - B);
  for (const model of [...perModel.keys()].sort()) {
    const points = perModel
      .get(model)
      .map((row) => {
        const c = row.counts;
        const rated = c.thumbs_up + c.thumbs_down;
        return { day: Math.floor(Date.parse(`${row.day}T00:00:00Z`) / DAY_MS), rated, up: c.thumbs_up, total: c.total };
      })
      .filter((point) => point.rated > 0)
      .sort((a, b) => a.day - b.day);
    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.model = model;
    const caption = document.createElement("figcaption");
    caption.textContent = modelLabel(model);
    const rated = points.reduce((sum, p) => sum + p.rated, 0);
    const sub = document.createElement("span");
    sub.className = "sub";
    sub.textContent = ` · ${rated} rated on ${points.length} day${points.length === 1 ? "" : "s"}`;
    caption.append(sub);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "trend", role: "img" });
    chart.setAttribute(
      "aria-label",
      `Satisfaction per day for ${modelLabel(model)}: ` +
        (points.length ? points.map((p) => `${iso(p.day * DAY_MS).slice(0, 10)} ${fmtPct(p.up / p.rated)}`).join(", ") : "no ratings"),
    );
    for (const tick of [0, 0.5, 1]) {
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(tick), y2: y(tick), class: "grid" }));
      const label = svg("text", { x: L - 4, y: y(tick) + 3, "text-anchor": "end", class: "axis" });
      label.textContent = `${tick * 100}%`;
      chart.append(label);
    }
    for (const [day, anchor] of [[firstDay, "start"], [lastDay, "end"]]) {
      const label = svg("text", { x: x(day), y: H - 6, "text-anchor": anchor, class: "axis" });
      label.textContent = iso(day * DAY_MS).slice(5, 10);
      chart.append(label);
    }
    if (points.length) {
      const intervals = points.map((p) => wilson(p.up, p.rated));
      const upper = points.map((p, i) => `${x(p.day).toFixed(1)},${y(intervals[i][1]).toFixed(1)}`);
      const lower = points.map((p, i) => `${x(p.day).toFixed(1)},${y(intervals[i][0]).toFixed(1)}`).reverse();
      if (points.length === 1) {
        const p = points[0];
        chart.append(svg("rect", { x: x(p.day) - 3, y: y(intervals[0][1]), width: 6, height: Math.max(1, y(intervals[0][0]) - y(intervals[0][1])), class: "band" }));
      } else {
        chart.append(svg("polygon", { points: [...upper, ...lower].join(" "), class: "band" }));
        chart.append(svg("polyline", { points: points.map((p) => `${x(p.day).toFixed(1)},${y(p.up / p.rated).toFixed(1)}`).join(" "), class: "line" }));
      }
      for (const p of points) {
        const dot = svg("circle", { cx: x(p.day).toFixed(1), cy: y(p.up / p.rated).toFixed(1), r: 2.5, class: "dot" });
        const title = svg("title");
        const ci = wilson(p.up, p.rated);
        title.textContent = `${iso(p.day * DAY_MS).slice(0, 10)}: ${fmtPct(p.up / p.rated)} of ${p.rated} (95 %: ${fmtPct(ci[0])} – ${fmtPct(ci[1])})`;
        dot.append(title);
        chart.append(dot);
      }
    }
    figure.append(caption, chart);
    root.append(figure);
  }
}

// ---- entries ------------------------------------------------------------

// The newest entries of the chosen kinds, merged newest first, one list
// cursor per kind; the model and comment filters are applied here.
class EntryStream {
  constructor(f) {
    this.f = f;
    this.sources = (f.kind ? [f.kind] : KINDS).map((kind) => ({ kind, after: null, buffer: [], done: false }));
  }

  async fill(source) {
    let path = `${API}/${source.kind}?limit=100`;
    if (this.f.rating) path += `&rating=${this.f.rating}`;
    if (source.after) path += `&after=${encodeURIComponent(source.after)}`;
    const page = await apiJson(path);
    for (const item of page.data) source.buffer.push({ ...item, kind: source.kind });
    if (page.last_id) source.after = page.last_id;
    source.done = !page.has_more;
  }

  keep(entry) {
    if (this.f.modelChosen && entry.model !== this.f.model) return false;
    if (this.f.comment === "with" && entry.description === undefined) return false;
    if (this.f.comment === "without" && entry.description !== undefined) return false;
    return true;
  }

  // Up to `count` entries; `more` tells whether any may follow.
  async next(count) {
    const out = [];
    let scans = 0;
    while (out.length < count) {
      const empty = this.sources.find((s) => s.buffer.length === 0 && !s.done);
      if (empty) {
        if (scans >= MAX_SCANS_PER_PAGE) break;
        scans += 1;
        await this.fill(empty);
        continue;
      }
      const ready = this.sources.filter((s) => s.buffer.length > 0);
      if (ready.length === 0) break;
      ready.sort((a, b) => (a.buffer[0].created_at < b.buffer[0].created_at ? 1 : -1));
      const entry = ready[0].buffer.shift();
      if (this.keep(entry)) out.push(entry);
    }
    return { entries: out, more: this.sources.some((s) => s.buffer.length > 0 || !s.done) };
  }
}

let entryState = null;

async function loadEntries(f, mine) {
  entryState = { stream: new EntryStream(f), pages: [], index: -1, more: true };
  await nextPage(mine);
}

async function nextPage(mine) {
  const state = entryState;
  if (state.index + 1 < state.pages.length) {
    state.index += 1;
  } else {
    const { entries, more } = await state.stream.next(PAGE_SIZE);
    if (mine !== generation || state !== entryState) return;
    state.more = more;
    if (entries.length === 0 && state.pages.length > 0) {
      renderPage();
      return;
    }
    state.pages.push(entries);
    state.index = state.pages.length - 1;
  }
  renderPage();
}

function renderPage() {
  const state = entryState;
  const list = $("entries");
  list.replaceChildren();
  const entries = state.pages[state.index] || [];
  if (entries.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No entries match these filters.";
    list.append(li);
  }
  for (const entry of entries) {
    const li = document.createElement("li");
    li.dataset.id = entry.id;
    li.dataset.kind = entry.kind;
    const meta = document.createElement("div");
    meta.className = "meta";
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = entry.id;
    const rating = document.createElement("span");
    rating.className = entry.rating === "thumbs_up" ? "rating-up" : entry.rating === "thumbs_down" ? "rating-down" : "";
    rating.textContent = entry.rating === "thumbs_up" ? "thumbs up" : entry.rating === "thumbs_down" ? "thumbs down" : "unrated";
    const model = document.createElement("span");
    model.textContent = modelLabel(entry.model);
    const kind = document.createElement("span");
    kind.textContent = entry.kind;
    const when = document.createElement("time");
    when.dateTime = entry.created_at;
    when.textContent = entry.created_at.replace("T", " ").replace(/\.\d+Z$/, " UTC");
    meta.append(id, rating, model, kind, when);
    const comment = document.createElement("p");
    if (entry.description !== undefined) {
      comment.className = "comment";
      comment.textContent = entry.description === "" ? "(empty comment)" : entry.description;
    } else {
      comment.className = "no-comment";
      comment.textContent = "No comment";
    }
    li.append(meta, comment);
    list.append(li);
  }
  $("page-label").textContent = `Page ${state.index + 1}`;
  $("prev-page").disabled = state.index <= 0;
  $("next-page").disabled = state.index + 1 >= state.pages.length && !state.more;
}

// ---- export -------------------------------------------------------------

async function exportCsv(kind) {
  const f = filters();
  let path = `${API}/export/${kind}`;
  if (f.rating) path += `?rating=${f.rating}`;
  status(`Preparing the ${kind} export…`, "loading");
  try {
    const response = await api(path);
    const blob = await response.blob();
    const disposition = response.headers.get("content-disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = match ? match[1] : `feedback-${kind}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    const truncated = response.headers.get("x-export-truncated") === "true";
    status(truncated ? `Exported ${kind}; the export was cut at its row cap.` : `Exported ${kind}.`, "");
  } catch (error) {
    failed(error);
  }
}

// ---- wiring -------------------------------------------------------------

async function reload() {
  generation += 1;
  const mine = generation;
  const f = filters();
  document.body.setAttribute("aria-busy", "true");
  status("Loading…", "loading");
  try {
    const stats = await loadStats(f, mine);
    if (stats === null) return;
    renderModelOptions(stats);
    renderTotals(stats, f);
    renderCharts(stats, f);
    await loadEntries(f, mine);
    if (mine !== generation) return;
    const total = [...stats.models.values()].reduce((sum, row) => sum + row.counts.total, 0);
    status(total === 0 ? "No feedback in this period yet." : `Updated ${new Date().toLocaleTimeString()}.`, "");
  } catch (error) {
    if (mine === generation) failed(error);
  } finally {
    if (mine === generation) document.body.removeAttribute("aria-busy");
  }
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY_STORAGE, value);
    $("api-key").value = "";
    $("key-message").hidden = true;
    showBoard();
    reload();
  });
  $("sign-out").addEventListener("click", () => askForKey(""));
  $("filters").addEventListener("change", () => reload());
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("refresh").addEventListener("click", () => reload());
  $("next-page").addEventListener("click", async () => {
    try {
      await nextPage(generation);
    } catch (error) {
      failed(error);
    }
  });
  $("prev-page").addEventListener("click", () => {
    if (entryState && entryState.index > 0) {
      entryState.index -= 1;
      renderPage();
    }
  });
  for (const kind of KINDS) $(`export-${kind}`).addEventListener("click", () => exportCsv(kind));
  if (key()) {
    showBoard();
    reload();
  } else {
    askForKey("");
  }
}

start();
