// The saev explorer page: no framework, no network beyond this server.
"use strict";

const state = {image: null, sel: new Set(), edits: new Map(), only: false, dense: false};
const client = Math.random().toString(36).slice(2);
let info = null, offset = 0, predictSeq = 0, latentsSeq = 0, latestPrediction = null;
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function setStatus(text) { $("status").textContent = text; }

// State in the URL: ?image=s12&sel=1,2,3&edits=686:-1,12:0.5&only=1

function saveUrl() {
  const p = new URLSearchParams();
  if (state.image) p.set("image", state.image);
  if (state.sel.size) p.set("sel", [...state.sel].sort((a, b) => a - b).join(","));
  if (state.edits.size) p.set("edits", [...state.edits].map(([s, v]) => `${s}:${v}`).join(","));
  if (state.only) p.set("only", "1");
  if (state.dense) p.set("dense", "1");
  history.replaceState(null, "", "?" + p.toString());
}

function loadUrl() {
  const p = new URLSearchParams(location.search);
  state.image = p.get("image");
  state.sel = new Set((p.get("sel") || "").split(",").filter(Boolean).map(Number));
  state.edits = new Map((p.get("edits") || "").split(",").filter(Boolean).map((e) => e.split(":")).map(([s, v]) => [Number(s), Number(v)]));
  state.only = p.get("only") === "1";
  state.dense = p.get("dense") === "1";
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
  state.image = id;
  state.sel.clear();
  saveUrl();
  await showImage(name || id);
}

async function showImage(name) {
  $("image-name").textContent = name;
  $("crop").src = `/api/images/${state.image}/crop.png`;
  await new Promise((ok) => { $("crop").onload = ok; $("crop").onerror = ok; });
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
  if (state.only) refreshPredictions();
}

// Latents

async function refreshLatents() {
  if (!state.image) return;
  const seq = ++latentsSeq;
  const data = await api("/api/latents", {image: state.image, patches: [...state.sel], top: 20, include_dense: state.dense});
  if (seq !== latentsSeq) return;
  const rows = data.latents;
  for (const s of state.edits.keys()) {  // edited latents stay listed
    if (!rows.some((r) => r.latent === s)) rows.push(await api(`/api/latents/${state.image}/${s}`));
  }
  $("latents").replaceChildren(...rows.map(latentCard));
}

function latentCard(row) {
  const card = document.createElement("div");
  card.className = "latent" + (state.edits.has(row.latent) ? " edited" : "");
  card.dataset.latent = row.latent;
  const link = row.page ? ` <a href="/visuals/latents/${row.latent}.html" target="_blank">gallery</a>` : "";
  const freq = row.freq === null ? "" : ` · fires on ${(100 * row.freq).toFixed(2)}% of tokens`;
  card.innerHTML = `<div class="head"><strong>latent ${row.latent}</strong><span>sum ${row.score.toFixed(2)} · max ${row.max.toFixed(2)}${freq}${link}</span></div>`;
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
    img.title = `image ${t.image_i}: ${t.value.toFixed(2)}`;
    img.addEventListener("click", () => selectImage(`s${t.image_i}`));
    examples.appendChild(img);
  }
  visual.appendChild(examples);
  card.appendChild(visual);
  const value = state.edits.has(row.latent) ? state.edits.get(row.latent) : null;
  const controls = document.createElement("div");
  controls.className = "controls";
  controls.innerHTML = `<input type="range" min="${info.slider.min}" max="${info.slider.max}" step="0.1" value="${value ?? 1}">` +
    `<span class="value">${value === null ? "unchanged" : value + "x max"}</span>` +
    `<button class="suppress">suppress</button><button class="reset">reset</button>`;
  const slider = controls.querySelector("input");
  const label = controls.querySelector(".value");
  const set = (v) => {
    if (v === null) state.edits.delete(row.latent); else state.edits.set(row.latent, v);
    label.textContent = v === null ? "unchanged" : v + "x max";
    card.classList.toggle("edited", v !== null);
    saveUrl();
    refreshPredictions();
  };
  slider.addEventListener("input", () => set(Number(slider.value)));
  controls.querySelector(".suppress").addEventListener("click", () => { slider.value = info.slider.suppress; set(info.slider.suppress); });
  controls.querySelector(".reset").addEventListener("click", () => { slider.value = 1; set(null); });
  card.appendChild(controls);
  return card;
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

$("add").addEventListener("click", async () => {
  const s = Number($("add-id").value);
  if (!state.image || !Number.isInteger(s)) return;
  try {
    const row = await api(`/api/latents/${state.image}/${s}`);
    state.edits.set(s, 1);
    saveUrl();
    $("latents").prepend(latentCard(row));
    refreshPredictions();
  } catch (err) { setStatus(err.message); }
});
$("reset-all").addEventListener("click", () => { state.edits.clear(); saveUrl(); refreshLatents(); refreshPredictions(); });

// Predictions

async function refreshPredictions() {
  if (!state.image) return;
  const seq = ++predictSeq;
  const body = {image: state.image, client, edits: [...state.edits].map(([latent, value]) => ({latent, value}))};
  if (state.only && state.sel.size) body.patches = [...state.sel];
  setStatus("computing…");
  const t0 = performance.now();
  let data;
  try { data = await api("/api/predict", body); } catch (err) { setStatus(err.message); return; }
  if (data.superseded || seq !== predictSeq) return;
  latestPrediction = data;
  renderPredictions();
  setStatus(`updated in ${Math.round(performance.now() - t0)} ms`);
  document.body.dataset.predictions = String(seq);
}

function renderPredictions() {
  const data = latestPrediction;
  if (!data) return;
  const changed = new Set(data.changed);
  if (info.head.kind === "image") {
    const order = data.before.probs.map((p, c) => [p, c]).sort((a, b) => b[0] - a[0]).map(([, c]) => c).slice(0, 12);
    $("before").replaceChildren(bars(data.before.probs, order, new Set()));
    $("after").replaceChildren(bars(data.after.probs, order, changed));
  } else {
    $("before").replaceChildren(predictionMap(data.before, new Set()), legend(data.before));
    $("after").replaceChildren(predictionMap(data.after, changed), legend(data.after));
  }
}

function legend(pred) {
  const filter = $("class-filter").value;
  const shown = filter === "" ? [...new Set(pred.top.filter((c) => c >= 0))].sort((a, b) => a - b) : [info.head.classes.indexOf(filter)];
  const box = document.createElement("div");
  box.className = "legend";
  for (const c of shown) {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${PALETTE[c % PALETTE.length]}"></i>`;
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
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill" style="display:block;width:${(100 * probs[c]).toFixed(1)}%"></span></span><span>${probs[c].toFixed(2)}</span>`;
    row.querySelector(".name").textContent = info.head.classes[c];
    box.appendChild(row);
  }
  return box;
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"];

function predictionMap(pred, changed) {
  const [rows, cols] = info.grid;
  const filter = $("class-filter").value;
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
    cell.title = names.join(", ") || "nothing";
    const shown = filter === "" ? pred.top[p] : (names.includes(filter) ? info.head.classes.indexOf(filter) : -1);
    if (shown >= 0) cell.style.background = PALETTE[shown % PALETTE.length] + "99";
    cells.appendChild(cell);
  });
  box.append(img, cells);
  return box;
}

$("class-filter").addEventListener("change", renderPredictions);

// Start

async function start() {
  info = await api("/api/info");
  $("meta").textContent = `${info.title} · ${info.vit}, block ${info.layer} (${info.tokens}), ${info.d_sae} latents · head ${info.head.name} (${info.head.kind === "patch" ? "per patch" : "per image"})`;
  if (info.head.kind === "patch") {
    $("class-filter-row").hidden = false;
    $("class-filter").replaceChildren(new Option("top class", ""), ...info.head.classes.map((c) => new Option(c, c)));
  }
  $("dense-label").textContent = `include latents firing on more than ${100 * info.dense_freq}% of tokens`;
  loadUrl();
  $("only-selection").checked = state.only;
  $("dense").checked = state.dense;
  $("more").addEventListener("click", loadImages);
  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try {
      const res = await fetch("/api/upload", {method: "POST", body: file});
      const data = await res.json();
      if (!res.ok) throw new Error(data.error);
      await selectImage(data.id, file.name);
    } catch (err) { setStatus(err.message); }
  });
  await loadImages();
  if (state.image) await showImage(state.image);
  document.body.dataset.ready = "1";
}

start().catch((err) => setStatus(err.message));
