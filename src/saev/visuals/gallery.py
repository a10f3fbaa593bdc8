"""The static HTML feature gallery: works from file:// with no network, server or CDN.

`index.html` lists every latent (sortable, filterable by log-frequency range); each rendered
latent gets `latents/<id>.html` with its top images (heatmaps over the crop the model saw),
activation histogram, statistics and each image's source. Dead latents are listed, not rendered.
"""

import dataclasses
import html
import json
import math
import pathlib
from typing import Any

from saev.fileio import atomic_open

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
a{color:#0b5cad}table{border-collapse:collapse;font-size:.9rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;user-select:none;background:#eee;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}.dead{color:#999}
.controls{margin:1rem 0;display:flex;gap:1rem;flex-wrap:wrap;align-items:center}
.controls input[type=number]{width:5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(232px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px}
figure img{max-width:224px;max-height:224px;display:block}figure.wide img{max-width:100%;max-height:none}
figcaption{font-size:.75rem;word-break:break-all;margin-top:4px}
.stats td{text-align:left}.nav{margin:.5rem 0}
"""

INDEX_JS = """
const rows = JSON.parse(document.getElementById('data').textContent);
let key = 'log10_freq', desc = true, limit = 500;
const body = document.querySelector('#latents tbody');
function num(id){const v = parseFloat(document.getElementById(id).value); return isNaN(v) ? null : v;}
function render(){
  const lo = num('lo'), hi = num('hi'), showDead = document.getElementById('dead').checked;
  const q = document.getElementById('q').value.trim();
  let shown = rows.filter(r => (showDead || !r.dead) && (lo === null || r.log10_freq >= lo) &&
    (hi === null || r.log10_freq <= hi) && (q === '' || String(r.latent).startsWith(q) || (r.note || '').toLowerCase().includes(q.toLowerCase())));
  shown.sort((a, b) => {
    const x = a[key] ?? -Infinity, y = b[key] ?? -Infinity;
    if (typeof x === 'string' || typeof y === 'string') return (desc ? -1 : 1) * String(x).localeCompare(String(y));
    return desc ? y - x : x - y;
  });
  document.getElementById('count').textContent = shown.length + ' of ' + rows.length + ' latents';
  const frag = document.createDocumentFragment();
  for (const r of shown.slice(0, limit)) {
    const tr = document.createElement('tr');
    if (r.dead) tr.className = 'dead';
    const name = r.page ? `<a href="latents/${r.latent}.html">${r.latent}</a>` : String(r.latent) + (r.dead ? ' (dead)' : '');
    tr.innerHTML = `<td>${name}</td><td>${r.freq.toExponential(2)}</td><td>${r.dead ? '-inf' : r.log10_freq.toFixed(2)}</td>` +
      `<td>${r.mean.toFixed(3)}</td><td>${r.max.toFixed(3)}</td>`;
    const note = document.createElement('td');
    note.textContent = r.note || '';
    note.style.textAlign = 'left';
    tr.appendChild(note);
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
  document.getElementById('more').hidden = shown.length <= limit;
}
document.querySelectorAll('#latents th').forEach(th => th.addEventListener('click', () => {
  desc = th.dataset.key === key ? !desc : true; key = th.dataset.key; render();
}));
for (const id of ['lo', 'hi', 'dead', 'q']) document.getElementById(id).addEventListener('input', render);
document.getElementById('more').addEventListener('click', () => { limit += 500; render(); });
render();
"""


@dataclasses.dataclass(frozen=True)
class TopImage:
    rank: int
    image_i: int
    value: float
    thumb: str
    """Path of the thumbnail, relative to the gallery folder."""
    size: tuple[int, int]
    """Thumbnail width and height in pixels."""
    source: str
    label: str | None
    missing: bool


@dataclasses.dataclass(frozen=True)
class Figure:
    """An extra picture on a latent's page, e.g. what editing the latent does."""

    src: str
    """Path relative to the gallery folder."""
    title: str
    caption: str


@dataclasses.dataclass(frozen=True)
class LatentPage:
    latent: int
    note: str
    freq: float
    mean: float
    max: float
    n_tokens: int
    hist_counts: list[int]
    hist_edges: list[float]
    images: list[TopImage]
    figures: list[Figure] = dataclasses.field(default_factory=list)


def write_index(out: pathlib.Path, rows: list[dict[str, Any]], title: str, subtitle: str) -> pathlib.Path:
    data = json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")
    headers = [
        ("latent", "latent"),
        ("freq", "frequency"),
        ("log10_freq", "log10 frequency"),
        ("mean", "mean when firing"),
        ("max", "max"),
        ("note", "note"),
    ]
    ths = "".join(f'<th data-key="{k}">{html.escape(label)}</th>' for k, label in headers)
    body = f"""<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
<div class="controls"><label>log10 frequency from <input id="lo" type="number" step="0.5"> to <input id="hi" type="number" step="0.5"></label>
<label><input id="dead" type="checkbox"> show dead latents</label><label>latent or note <input id="q" type="search" size="12"></label><span id="count"></span></div>
<table id="latents"><thead><tr>{ths}</tr></thead><tbody></tbody></table><p><button id="more" hidden>show more</button></p>
<script id="data" type="application/json">{data}</script><script>{INDEX_JS}</script>"""
    path = out / "index.html"
    _write(path, _page(title, body))
    return path


def write_latent_page(
    out: pathlib.Path, page: LatentPage, prev_id: int | None, next_id: int | None, sort_by: str
) -> None:
    nav = ['<a href="../index.html">all latents</a>']
    nav += [f'<a href="{p}.html">&larr; latent {p}</a>' for p in [prev_id] if p is not None]
    nav += [f'<a href="{n}.html">latent {n} &rarr;</a>' for n in [next_id] if n is not None]
    log_freq = f"{math.log10(page.freq):.2f}" if page.freq > 0 else "-inf"
    stats = (
        f'<table class="stats"><tr><td>firing frequency</td><td>{page.freq:.3e} (log10 {log_freq}) of {page.n_tokens:,} tokens</td></tr>'
        f"<tr><td>mean activation when firing</td><td>{page.mean:.4g}</td></tr><tr><td>max activation</td><td>{page.max:.4g}</td></tr>"
        f"<tr><td>images ranked by</td><td>{html.escape(_RANKED_BY[sort_by])}</td></tr></table>"
    )
    figures = "".join(_figure(img) for img in page.images)
    note = f"<p><strong>{html.escape(page.note)}</strong></p>" if page.note else ""
    body = f"""<div class="nav">{" | ".join(nav)}</div><h1>Latent {page.latent}</h1>{note}{stats}
<h2>Activations when firing</h2>{histogram_svg(page.hist_counts, page.hist_edges)}
<h2>Top {len(page.images)} images</h2><div class="grid">{figures}</div>{"".join(_extra(f) for f in page.figures)}"""
    _write(out / "latents" / f"{page.latent}.html", _page(f"Latent {page.latent}", body))


_RANKED_BY = {
    "patch": "maximum activation over patches",
    "img": "sum of activations over patches",
    "cls": "activation on the [CLS] token",
}


def _extra(fig: Figure) -> str:
    return (
        f'<h2>{html.escape(fig.title)}</h2><figure class="wide"><img src="../{html.escape(fig.src)}" alt="{html.escape(fig.title)}">'
        f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
    )


def _figure(img: TopImage) -> str:
    caption = f"#{img.rank + 1} &middot; {img.value:.4g}"
    if img.label:
        caption += f" &middot; {html.escape(str(img.label))}"
    note = " (image missing)" if img.missing else ""
    return (
        f'<figure><img src="../{html.escape(img.thumb)}" width="{img.size[0]}" height="{img.size[1]}" alt="image {img.image_i}">'
        f"<figcaption>{caption}<br>{html.escape(img.source)}{note}</figcaption></figure>"
    )


def histogram_svg(counts: list[int], edges: list[float], width: int = 480, height: int = 140) -> str:
    """Bars of a log-binned histogram, trimmed to the occupied bins, as inline SVG."""
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return "<p>never fires</p>"
    lo, hi = nonzero[0], nonzero[-1] + 1
    shown = counts[lo:hi]
    top = max(shown)
    bar_w = width / len(shown)
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - 20 - (c / top) * (height - 30):.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{(c / top) * (height - 30):.1f}" fill="#5b6abf"><title>{edges[lo + i]:.3g}-{edges[lo + i + 1]:.3g}: {c}</title></rect>'
        for i, c in enumerate(shown)
    )
    labels = f'<text x="0" y="{height - 4}" font-size="11">{edges[lo]:.3g}</text><text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{edges[hi]:.3g} (log scale)</text>'
    return f'<svg width="{width}" height="{height}" role="img" aria-label="activation histogram">{bars}{labels}</svg>'


def _page(title: str, body: str) -> str:
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n'


def _write(path: pathlib.Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
