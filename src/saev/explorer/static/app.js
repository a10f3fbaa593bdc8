// The saev explorer page: no framework, no network beyond this server.
"use strict";

// `image` is the server's id; the URL and titles carry the image's name instead. `edits` maps a
// latent to {op, value}: "scale" (the slider's factor) or "set" (suppress: -1x its maximum).
const state = {image: null, name: null, sel: new Set(), edits: new Map(), pinned: new Set(), only: false, dense: false, cls: "", q: ""};
const client = Math.random().toString(36).slice(2);
let info = null, offset = 0, predictSeq = 0, latentsSeq = 0, searchSeq = 0, latestPrediction = null;
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

// Each error is shown beside the control that caused it, and cleared when that control next works.
function showError(el, err) { el.textContent = err ? err.message || String(err) : ""; }

// State in the URL: ?image=000012.png&sel=1,2,3&edits=686:-1x,12:0.5&pin=7&only=1&dense=1&cls=shape:square&q=circle
// (12:0.5 scales latent 12 by 0.5; 686:-1x sets latent 686 to -1x its maximum, as `saev steer --edit` writes it).

function saveUrl() {
  const p = new URLSearchParams();
  if (state.name) p.set("image", state.name);
  if (state.sel.size) p.set("sel", [...state.sel].sort((a, b) => a - b).join(","));
  if (state.edits.size) p.set("edits", [...state.edits].map(([s, e]) => `${s}:${e.value}${e.op === "set" ? "x" : ""}`).join(","));
  if (state.pinned.size) p.set("pin", [...state.pinned].join(","));
  if (state.only) p.set("only", "1");
  if (state.dense !== info.dense) p.set("dense", state.dense ? "1" : "0");
  if (state.cls) p.set("cls", state.cls);
  if (state.q) p.set("q", state.q);
  history.replaceState(null, "", "?" + p.toString());
}

function loadUrl() {
  const p = new URLSearchParams(location.search);
  const numbers = (key) => (p.get(key) || "").split(",").filter(Boolean).map(Number).filter(Number.isInteger);
  state.name = p.get("image");
  state.sel = new Set(numbers("sel"));
  state.edits = new Map((p.get("edits") || "").split(",").filter(Boolean).map((e) => e.split(":"))
    .map(([s, v]) => [Number(s), {op: v.endsWith("x") ? "set" : "scale", value: Number(v.replace(/x$/, ""))}]));
  state.pinned = new Set(numbers("pin"));
  state.only = p.get("only") === "1";
  state.dense = p.has("dense") ? p.get("dense") === "1" : info.dense;
  state.cls = p.get("cls") || "";
  state.q = p.get("q") || "";
}

// Images

async function loadImages() {
  const page = await api(`/api/images?offset=${offset}&limit=60`);
  for (const im of page.images) {
    const img = document.createElement("img");
    img.src = `/api/images/${im.id}/thumb.png`;
    img.alt = img.title = im.name + (im.label ? ` (${im.label})` : "");
    img.dataset.id = im.id;
    img.addEventListener("click", () => selectImage(im.id, im.name));
    $("thumbs").appendChild(img);
  }
  offset += page.images.length;
  $("more").hidden = offset >= page.total;
  markCurrent();
}

function markCurrent() {
  document.querySelectorAll("#thumbs img").forEach((img) => img.classList.toggle("current", img.dataset.id === state.image));
}

async function selectImage(id, name) {
  if (id !== state.image) {
    // Edits were made for the image they were made on: another image starts unedited.
    state.edits.clear();
    state.sel.clear();
  }
  state.image = id;
  state.name = name;
  saveUrl();
  await showImage();
}

async function showImage() {
  $("image-name").textContent = state.name;
  document.title = `${state.name} · saev explorer`;
  showError($("image-error"), null);
  $("placeholder").hidden = true;
  $("stage").hidden = false;
  const loaded = new Promise((ok) => { $("crop").onload = () => ok(true); $("crop").onerror = () => ok(false); });
  $("crop").src = `/api/images/${state.image}/crop.png`;
  if (!await loaded) showError($("image-error"), `cannot show ${state.name}: the image is missing or unreadable.`);
  markCurrent();
  drawGrid();
  await Promise.all([refreshLatents(), refreshPredictions()]);
}

function drawGrid() {
  const [rows, cols] = info.grid;
  const grid = $("grid");
  grid.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
  grid.style.gridTemplateRows = `repeat(${rows}, 1fr)`;
  grid.replaceChildren();
  for (let p = 0; p < rows * cols; p++) {
    const cell = document.createElement("div");
    cell.className = "patch" + (state.sel.has(p) ? " selected" : "");
    cell.dataset.patch = p;
    grid.appendChild(cell);
  }
}

// Selecting patches: click toggles, drag paints.

let dragging = null;
function patchAt(event) {
  const el = document.elementFromPoint(event.clientX, event.clientY);
  return el && el.classList.contains("patch") ? Number(el.dataset.patch) : null;
}
function paint(p) {
  if (p === null) return;
  if (dragging) state.sel.add(p); else state.sel.delete(p);
  $("grid").children[p].classList.toggle("selected", state.sel.has(p));
}
$("grid").addEventListener("pointerdown", (e) => {
  const p = patchAt(e);
  if (p === null) return;
  dragging = !state.sel.has(p);
  paint(p);
});
$("grid").addEventListener("pointermove", (e) => { if (dragging !== null) paint(patchAt(e)); });
window.addEventListener("pointerup", () => {
  if (dragging === null) return;
  dragging = null;
  selectionChanged();
});
$("clear").addEventListener("click", () => { state.sel.clear(); drawGrid(); selectionChanged(); });
$("only-selection").addEventListener("change", (e) => { state.only = e.target.checked; saveUrl(); refreshPredictions(); });
$("dense").addEventListener("change", (e) => { state.dense = e.target.checked; saveUrl(); refreshLatents(); });

function selectionChanged() {
  saveUrl();
  refreshLatents();
  if (state.only) refreshPredictions(); else renderPredictions();  // a patch head's bars average the selection
}

// Latents

async function refreshLatents() {
  if (!state.image) return;
  const seq = ++latentsSeq;
  let rows, data;
  try {
    data = await api("/api/latents", {image: state.image, patches: [...state.sel], top: 20, include_dense: state.dense});
    rows = data.latents;
    for (const s of [...state.edits.keys(), ...state.pinned]) {  // edited and added latents stay listed
      if (!rows.some((r) => r.latent === s)) rows.push(await api(`/api/latents/${state.image}/${s}`));
    }
  } catch (err) { showError($("latents-error"), err); return; }
  if (seq !== latentsSeq) return;
  showError($("latents-error"), null);
  $("latents-title").textContent = state.sel.size ? `Latents on the selection (${state.sel.size} patches)` : "Latents on the whole image";
  const hidden = data.hidden_dense;
  $("dense-hidden").textContent = !state.dense && hidden ? `${hidden} dense latent${hidden === 1 ? "" : "s"} hidden` : "";
  $("latents").replaceChildren(...rows.map(latentCard));
  applySearch();
  document.body.dataset.latents = String(seq);
  document.body.dataset.latentsFor = state.image;
}

const TICKS = [-5, -1, 0, 1, 5];

function editText({op, value: v}) {
  if (op === "set") return `set to ${v}× its max${v === -1 ? " (suppressed)" : ""}`;
  const what = v === 1 ? "unchanged" : v === 0 ? "removed" : v < 0 ? "flipped" : v > 1 ? "boosted" : "weakened";
  return `${v}× (${what})`;
}

function nameNode(row) {
  const box = document.createElement("div");
  if (!("name" in row)) return box;  // naming did not run
  const name = document.createElement("span");
  name.className = "name" + (row.name === null ? " unexplained" : "");
  name.textContent = row.name === null ? "unexplained" : row.name.text;
  box.appendChild(name);
  if (row.name !== null) {
    const {f1, precision, recall, source, level} = row.name;
    const score = document.createElement("span");
    score.className = "f1";
    score.textContent = `F1 ${f1.toFixed(2)}`;
    score.title = `precision ${precision.toFixed(2)}, recall ${recall.toFixed(2)}, ${level} level, from ${source}`;
    box.appendChild(score);
  }
  return box;
}

function latentCard(row) {
  const card = document.createElement("div");
  card.className = "latent" + (state.edits.has(row.latent) ? " edited" : "");
  card.dataset.latent = row.latent;
  card.dataset.name = row.name ? row.name.text : "";
  const link = row.page ? ` <a href="/visuals/latents/${row.latent}.html" target="_blank">gallery</a>` : "";
  const freq = row.freq === null ? "" : ` · fires on ${(100 * row.freq).toFixed(2)}% of tokens`;
  card.innerHTML = `<div class="head"><strong>latent ${row.latent}</strong><span>sum ${row.score.toFixed(2)} · max ${row.max.toFixed(2)}${freq}${link}</span></div>`;
  card.appendChild(nameNode(row));
  if (row.note) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = row.note;
    card.appendChild(note);
  }
  const visual = document.createElement("div");
  visual.appendChild(heatmap(row.codes, row.max));
  const examples = document.createElement("span");
  examples.className = "examples";
  for (const t of row.top) {
    const img = document.createElement("img");
    img.src = `/api/images/s${t.image_i}/thumb.png`;
    img.title = `${t.name}: ${t.value.toFixed(2)}`;
    img.addEventListener("click", () => selectImage(`s${t.image_i}`, t.name));
    examples.appendChild(img);
  }
  visual.appendChild(examples);
  card.appendChild(visual);
  card.appendChild(sliderControls(row.latent, card));
  return card;
}

function sliderControls(latent, card) {
  // The value is a factor on the latent's code where it fires, sent as shown: 1× unchanged, 0 removed.
  const {min, max, suppress} = info.slider;
  const edit = state.edits.get(latent) ?? {op: "scale", value: 1};
  const at = (t) => (100 * (t - min) / (max - min)).toFixed(1);
  const box = document.createElement("div");
  box.className = "edit";
  box.innerHTML = `<input type="range" min="${min}" max="${max}" step="0.1" value="${edit.op === "scale" ? edit.value : 1}" aria-label="factor on latent ${latent}">` +
    `<div class="ticks">${TICKS.map((t) => `<span class="${t === 0 || t === 1 ? "key" : ""}" style="left:${at(t)}%">${t}×</span>`).join("")}` +
    `<span class="word left" style="left:${at(0)}%">removed</span><span class="word" style="left:${at(1)}%">unchanged</span></div>` +
    `<div class="controls"><span class="value"></span><span class="slider-key">factor on its code where it fires</span>` +
    `<button class="suppress" title="set it to ${suppress}× its largest activation where it fires">suppress</button><button class="reset">reset</button></div>` +
    `<p class="error" role="alert"></p>`;
  const slider = box.querySelector("input");
  const label = box.querySelector(".value");
  const error = box.querySelector(".error");
  const show = (e) => {
    label.textContent = editText(e);
    // A set edit is not the slider's factor: the slider is dimmed and its key hidden until moved.
    slider.classList.toggle("inactive", e.op === "set");
    box.querySelector(".slider-key").hidden = e.op === "set";
  };
  const set = (e) => {
    if (e === null) state.edits.delete(latent); else state.edits.set(latent, e);
    show(e ?? {op: "scale", value: 1});
    card.classList.toggle("edited", e !== null);
    saveUrl();
    refreshPredictions(error);
  };
  show(edit);
  slider.addEventListener("input", () => set({op: "scale", value: Number(slider.value)}));
  box.querySelector(".suppress").addEventListener("click", () => { slider.value = 1; set({op: "set", value: suppress}); });
  box.querySelector(".reset").addEventListener("click", () => { slider.value = 1; set(null); });
  return box;
}

function heatmap(codes, max) {
  const [rows, cols] = info.grid;
  const canvas = document.createElement("canvas");
  const crop = $("crop");
  canvas.width = crop.naturalWidth || 224;
  canvas.height = crop.naturalHeight || 224;
  const ctx = canvas.getContext("2d");
  if (crop.complete && crop.naturalWidth) ctx.drawImage(crop, 0, 0);
  const w = canvas.width / cols, h = canvas.height / rows;
  codes.forEach((v, p) => {
    if (v <= 0) return;
    const a = Math.min(1, v / (max || 1));
    ctx.fillStyle = `rgba(255, ${Math.round(200 * (1 - a))}, 0, ${0.25 + 0.6 * a})`;
    ctx.fillRect((p % cols) * w, Math.floor(p / cols) * h, w, h);
  });
  return canvas;
}

async function pin(s, errorEl) {
  if (!state.image) { showError(errorEl, "pick an image first."); return; }
  try {
    const row = await api(`/api/latents/${state.image}/${s}`);
    showError(errorEl, null);
    state.pinned.add(s);
    saveUrl();
    $("latents").querySelector(`.latent[data-latent='${s}']`)?.remove();
    $("latents").prepend(latentCard(row));
    applySearch();
  } catch (err) { showError(errorEl, err); }
}

$("add").addEventListener("click", () => {
  const text = $("add-id").value.trim();
  if (!/^[0-9]+$/.test(text)) { showError($("add-error"), `give a latent id, 0..${info.d_sae - 1}.`); return; }
  pin(Number(text), $("add-error"));
});
$("reset-all").addEventListener("click", () => { state.edits.clear(); saveUrl(); refreshLatents(); refreshPredictions(); });

// Searching latents by name: the list shows only matching cards, and other matching latents can be added.

function applySearch() {
  const q = state.q.trim().toLowerCase();
  document.querySelectorAll("#latents .latent").forEach((card) => card.classList.toggle("filtered", q !== "" && !card.dataset.name.toLowerCase().includes(q)));
}

async function search() {
  const seq = ++searchSeq;
  state.q = $("search").value;
  saveUrl();
  applySearch();
  const results = $("search-results");
  if (!state.q.trim()) { results.replaceChildren(); showError($("search-error"), null); return; }
  let data;
  try { data = await api(`/api/names?q=${encodeURIComponent(state.q.trim())}&limit=10`); } catch (err) { showError($("search-error"), err); return; }
  if (seq !== searchSeq) return;
  showError($("search-error"), data.total ? null : `no latent named like “${state.q.trim()}”.`);
  results.replaceChildren(...data.latents.map((hit) => {
    const row = document.createElement("div");
    row.dataset.latent = hit.latent;
    row.append(`latent ${hit.latent} `, nameNode(hit));
    const add = document.createElement("button");
    add.textContent = "show";
    add.addEventListener("click", () => pin(hit.latent, $("search-error")));
    row.appendChild(add);
    return row;
  }));
  if (data.total > data.latents.length) results.append(`… and ${data.total - data.latents.length} more`);
}

let searchTimer = null;
$("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 150); });

// Predictions

async function refreshPredictions(errorEl = $("predict-error")) {
  if (!state.image) return;
  const seq = ++predictSeq;
  const body = {image: state.image, client, edits: [...state.edits].map(([latent, {op, value}]) => ({latent, value, op}))};
  if (state.only && state.sel.size) body.patches = [...state.sel];
  $("status").textContent = "computing…";
  const t0 = performance.now();
  let data;
  try { data = await api("/api/predict", body); } catch (err) { showError(errorEl, err); $("status").textContent = ""; return; }
  if (data.superseded || seq !== predictSeq) return;
  document.querySelectorAll("#latents .error, #predict-error").forEach((el) => showError(el, null));
  latestPrediction = data;
  renderPredictions();
  $("status").textContent = `updated in ${Math.round(performance.now() - t0)} ms`;
  document.body.dataset.predictions = String(seq);
  document.body.dataset.predictionsFor = state.image;
}

function renderPredictions() {
  const data = latestPrediction;
  if (!data) return;
  const changed = new Set(data.changed);
  if (info.head.kind === "image") {
    const order = topClasses(data.before.probs);
    $("before").replaceChildren(bars(data.before.probs, order, new Set()));
    $("after").replaceChildren(bars(data.after.probs, order, changed));
  } else {
    // Per-class probability averaged over the selected patches (all of them when none is selected).
    const patches = state.sel.size ? [...state.sel] : data.before.probs.map((_, p) => p);
    const mean = (probs) => info.head.classes.map((_, c) => patches.reduce((sum, p) => sum + probs[p][c], 0) / patches.length);
    const before = mean(data.before.probs), after = mean(data.after.probs);
    const order = topClasses(before);
    const changedClasses = new Set(order.filter((c) => Math.abs(after[c] - before[c]) >= 0.01));
    const note = () => {
      const p = document.createElement("p");
      p.className = "map-note";
      p.textContent = `mean probability on ${state.sel.size ? "the selected patches" : "all patches"}`;
      return p;
    };
    $("before").replaceChildren(predictionMap(data.before, new Set()), legend(data.before), note(), bars(before, order, new Set()));
    $("after").replaceChildren(predictionMap(data.after, changed), legend(data.after), note(), bars(after, order, changedClasses));
  }
}

function topClasses(probs) {
  return probs.map((p, c) => [p, c]).sort((a, b) => b[0] - a[0]).map(([, c]) => c).slice(0, 12);
}

function legend(pred) {
  const shown = state.cls === "" ? [...new Set(pred.top.filter((c) => c >= 0))].sort((a, b) => a - b) : [info.head.classes.indexOf(state.cls)];
  const box = document.createElement("div");
  box.className = "legend";
  for (const c of shown) {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${info.head.colours[c]}"></i>`;
    item.append(info.head.classes[c]);
    box.appendChild(item);
  }
  return box;
}

function bars(probs, order, changed) {
  const box = document.createElement("div");
  box.className = "bars";
  for (const c of order) {
    const row = document.createElement("div");
    row.className = "bar" + (changed.has(c) ? " changed" : "");
    row.dataset.class = info.head.classes[c];
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill" style="display:block;width:${(100 * probs[c]).toFixed(1)}%"></span></span><span class="prob">${probs[c].toFixed(2)}</span>`;
    row.querySelector(".name").textContent = info.head.classes[c];
    box.appendChild(row);
  }
  return box;
}

function predictionMap(pred, changed) {
  const [rows, cols] = info.grid;
  const filter = info.head.classes.indexOf(state.cls);
  const box = document.createElement("div");
  box.className = "map";
  const img = document.createElement("img");
  img.src = $("crop").src;
  const cells = document.createElement("div");
  cells.className = "cells";
  cells.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
  cells.style.gridTemplateRows = `repeat(${rows}, 1fr)`;
  pred.classes.forEach((cls, p) => {
    const cell = document.createElement("div");
    const names = cls.map((c) => info.head.classes[c]);
    cell.className = "cell" + (changed.has(p) ? " changed" : "");
    cell.dataset.patch = p;
    cell.dataset.classes = names.join(",");
    const probs = pred.probs[p];
    cell.title = topClasses(probs).slice(0, 3).map((c) => `${info.head.classes[c]} ${probs[c].toFixed(2)}`).join("\n");
    const shown = state.cls === "" ? pred.top[p] : (names.includes(state.cls) ? filter : -1);
    if (shown >= 0) cell.style.background = info.head.colours[shown] + "99";
    cells.appendChild(cell);
  });
  box.append(img, cells);
  return box;
}

$("class-filter").addEventListener("change", (e) => { state.cls = e.target.value; saveUrl(); renderPredictions(); });

// Start

async function start() {
  info = await api("/api/info");
  const layer = document.createElement("span");
  layer.textContent = `layer ${info.layer}`;
  layer.title = `block ${info.block} of ${info.n_blocks}, counted from 0`;
  $("meta").replaceChildren(`${info.title} · ${info.vit}, `, layer, ` (${info.tokens}), ${info.d_sae} latents · head ${info.head.name} (${info.head.kind === "patch" ? "per patch" : "per image"})`);
  loadUrl();
  if (info.head.kind === "patch") {
    $("class-filter-row").hidden = false;
    $("class-filter").replaceChildren(new Option("top class", ""), ...info.head.classes.map((c) => new Option(c, c)));
    if (!info.head.classes.includes(state.cls)) state.cls = "";
    $("class-filter").value = state.cls;
  }
  $("dense-label").textContent = `show dense latents (firing on more than ${+(100 * info.dense_freq).toFixed(2)}% of tokens)`;
  $("only-selection").checked = state.only;
  $("dense").checked = state.dense;
  $("search").value = state.q;
  if (!info.named) {
    $("search").disabled = true;
    $("search").placeholder = "no latent names in the visuals folder";
  }
  $("more").addEventListener("click", loadImages);
  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try {
      const res = await fetch(`/api/upload?name=${encodeURIComponent(file.name)}`, {method: "POST", body: file});
      const data = await res.json();
      if (!res.ok) throw new Error(data.error);
      showError($("upload-error"), null);
      await selectImage(data.id, data.name);
    } catch (err) { showError($("upload-error"), err); }
  });
  await loadImages();
  if (state.name) {
    try {
      const found = await api(`/api/images/find?name=${encodeURIComponent(state.name)}`);
      state.image = found.id;
      state.name = found.name;
      saveUrl();
      await showImage();
    } catch (err) { showError($("image-error"), err); }
  }
  if (state.q) await search();
  document.body.dataset.ready = "1";
}

start().catch((err) => { $("meta").textContent = `cannot start: ${err.message}`; });
