"""The static HTML feature gallery: works from file:// with no network, server or CDN.

`index.html` plots every live latent (firing frequency against mean activation, log-log) and
lists them as cards with their names, notes and top images (sortable, filterable, searchable by id,
name or note, rendered latents first, dense ones marked and hidden unless asked for), or as a
table; it says which latents have pages and how to add others. Each rendered latent gets
`latents/<id>.html` with its name, its nearest latents by decoder direction and the latents firing
with it, a quantile strip (images sampled across its firing distribution), its top images twice
(the crop the model saw, and the same crop spotlit where the latent fires), the spotlight's
scale, the activation histogram, statistics and each image's source. Dead latents are listed,
not rendered or plotted.
"""

import dataclasses
import html
import json
import math
import pathlib
from typing import Any

import numpy as np

from saev.errors import ConfigError
from saev.fileio import atomic_open
from saev.nn.evaluation import DENSE_DEFINITION
from saev.visuals.heatmap import OUTLINE_LEVEL, spotlight_gain

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;padding:0 1.5rem;max-width:1400px;color:#222;background:#fafafa}
a{color:#0b5cad}h1{margin:.2rem 0}h2{margin:1.6rem 0 .6rem;font-size:1.2rem}
.sub{color:#555;margin:.3rem 0}code{background:#eef;padding:1px 4px;border-radius:3px;font-size:.85em;white-space:nowrap}
.overview{display:flex;flex-wrap:wrap;gap:1rem 1.5rem;align-items:flex-start;margin-top:1rem}
.about{flex:1 1 20rem;min-width:0;background:#fff;border:1px solid #ddd;border-left:4px solid #0b5cad;padding:.2rem .9rem;line-height:1.45;font-size:.92rem}
.about p{margin:.5rem 0}.about .cmd{display:block;white-space:normal;overflow-wrap:anywhere;padding:.4rem .5rem;line-height:1.5}
table{border-collapse:collapse;font-size:.9rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;user-select:none;background:#eee;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}td.note{text-align:left}.dead,.dead a{color:#999}
.controls{margin:1rem 0;display:flex;gap:.6rem 1.2rem;flex-wrap:wrap;align-items:center;position:sticky;top:0;
background:#fafafa;padding:.5rem 0;z-index:1;border-bottom:1px solid #ddd}
.controls input[type=number]{width:4.5rem}#count{color:#555}
.plot{flex:0 1 660px;margin:0;padding:0;border:0;background:none}.plot h2{margin:0 0 .4rem}
.plot svg{width:100%;height:auto;background:#fff;border:1px solid #ddd}
.plot figcaption{font-size:.8rem;color:#555;margin-top:4px}
#plot .pt{fill:#0b5cad;stroke:#fff;stroke-width:.8}#plot .pt.noted{fill:#d9480f}
#plot .np{fill:none;stroke:#9aa3ad;stroke-width:1}#plot .off{opacity:.12}
#plot a:hover .pt{stroke:#000;stroke-width:2}#plot .band{fill:#0b5cad;opacity:.07}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;display:flex;flex-direction:column;gap:4px}
.card .thumbs{display:grid;grid-template-columns:1fr 1fr;gap:2px}
.card .thumbs img{width:100%;height:auto;display:block;background:#eee}
.card .nothumbs{display:flex;align-items:center;justify-content:center;text-align:center;color:#888;font-size:.8rem;
background:repeating-linear-gradient(45deg,#f3f3f3,#f3f3f3 6px,#ececec 6px,#ececec 12px);min-height:3.2rem;padding:.3rem}
.card .title{font-weight:600}.card .note{font-size:.85rem}.card .nums{font-size:.78rem;color:#555}
.card.nopage{opacity:.85}.card.dead{opacity:.55}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:3px}.pair img,.single img{width:100%;height:auto;display:block}
.single{max-width:50%}figure.wide img{max-width:100%}
figcaption{font-size:.8rem;margin-top:4px;display:flex;gap:.5rem;align-items:baseline}
figcaption .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;min-width:0;flex:1}
figcaption .val{white-space:nowrap;font-variant-numeric:tabular-nums}
.stats td{text-align:left}.effects th,.effects td{text-align:left}.nav{margin:.5rem 0}.charts{display:flex;flex-wrap:wrap;gap:1rem 2rem;align-items:flex-start}
.charts svg{background:#fff;border:1px solid #ddd}.legend{font-size:.85rem;color:#444;max-width:36rem}
.badge{display:inline-block;font-size:.72rem;font-weight:600;padding:1px 6px;border-radius:9px;background:#fde2c8;color:#8a3b00;
vertical-align:middle;margin-left:.4rem}h1 .badge{font-size:.8rem}
.card .name,.latname{font-weight:600;color:#1a5d1a}.card .name .f1{font-weight:400;color:#555}
.unexplained,.card .name.unexplained{color:#999;font-style:italic;font-weight:400}.latname{font-size:1.05rem;margin:.3rem 0}
.latname .how{font-weight:400;color:#555;font-size:.9rem}
.related{display:flex;flex-wrap:wrap;gap:.5rem 2rem}.related table{font-size:.85rem}.related td{text-align:left}
.related td.num{text-align:right;font-variant-numeric:tabular-nums}.related p{margin:.2rem 0;font-size:.8rem;color:#555;max-width:26rem}
.strip{display:grid;grid-template-columns:repeat(9,minmax(0,1fr));gap:6px;max-width:1100px}
.strip figure{padding:3px}.strip img{width:100%;height:auto;display:block}
.strip figcaption{flex-direction:column;gap:0;font-size:.75rem;align-items:stretch}
.strip .pct{font-weight:600}.strip .name{color:#555}
@media (max-width:800px){.strip{grid-template-columns:repeat(3,minmax(0,1fr))}}
"""

INDEX_JS = """
const rows = JSON.parse(document.getElementById('data').textContent);
const DENSE = JSON.parse(document.getElementById('dense').textContent);
const thumb = JSON.parse(document.getElementById('thumb').textContent);
const $ = id => document.getElementById(id);
const points = new Map(Array.from(document.querySelectorAll('#plot [data-latent]'), c => [Number(c.dataset.latent), c]));
let key = 'freq', desc = true, limit = 120;
const PAGE = 120;
function num(id){const v = parseFloat($(id).value); return isNaN(v) ? null : v;}
function group(r){return r.page ? (r.note ? 0 : 1) : 2;}
function fmt(x, d){return x === 0 ? '0' : (Math.abs(x) >= 1e-2 && Math.abs(x) < 1e4 ? x.toPrecision(d) : x.toExponential(d - 1));}
function nameText(r){return r.name ? r.name.text : '';}
function value(r, k){return k === 'name' ? (r.name ? r.name.text : null) : r[k];}
function tableView(){return document.querySelector('input[name=view]:checked').value === 'table';}
function matching(){
  const lo = num('lo'), hi = num('hi'), q = $('q').value.trim().toLowerCase();
  const dead = $('dead').checked, only = $('rendered').checked;
  return rows.filter(r => (dead || !r.dead) && (!only || r.page) &&
    (lo === null || (r.log10_freq !== null && r.log10_freq >= lo)) && (hi === null || (r.log10_freq !== null && r.log10_freq <= hi)) &&
    (q === '' || String(r.latent).startsWith(q) || (r.note || '').toLowerCase().includes(q) || nameText(r).toLowerCase().includes(q) ||
     (r.name === null && 'unexplained'.startsWith(q))));
}
// Dense latents fire almost everywhere, so their cards say little: the cards hide them unless asked.
function hidesDense(){return !tableView() && !$('showdense').checked;}
function sorted(shown){
  const first = $('first').checked;
  return shown.sort((a, b) => {
    if (first && group(a) !== group(b)) return group(a) - group(b);
    const x = value(a, key) ?? -Infinity, y = value(b, key) ?? -Infinity;
    if (typeof x === 'string' || typeof y === 'string') return (desc ? -1 : 1) * String(x).localeCompare(String(y));
    return (desc ? y - x : x - y) || a.latent - b.latent;
  });
}
function card(r){
  const el = document.createElement('article');
  el.className = 'card' + (r.page ? '' : ' nopage') + (r.dead ? ' dead' : '');
  el.dataset.latent = r.latent;
  const href = `latents/${r.latent}.html`;
  const title = document.createElement(r.page ? 'a' : 'span');
  title.className = 'title'; title.textContent = 'latent ' + r.latent;
  if (r.page) title.href = href;
  const head = document.createElement('div');
  head.appendChild(title);
  if (r.dense) head.appendChild(badge());
  el.appendChild(head);
  if (r.name !== undefined) el.appendChild(nameLine(r.name));
  if (r.note) { const n = document.createElement('div'); n.className = 'note'; n.textContent = r.note; el.appendChild(n); }
  if (r.page && r.n_images > 0) {
    const a = document.createElement('a');
    a.className = 'thumbs'; a.href = href;
    for (let k = 0; k < Math.min(4, r.n_images); k++) {
      const img = document.createElement('img');
      img.src = `thumbs/${r.latent}/${k}.jpg`; img.width = thumb[0]; img.height = thumb[1];
      img.loading = 'lazy'; img.alt = `latent ${r.latent}, top image ${k + 1}`;
      a.appendChild(img);
    }
    el.appendChild(a);
  } else {
    const box = document.createElement('div');
    box.className = 'nothumbs';
    box.textContent = r.dead ? 'dead: never fires' : r.page ? 'no images' : 'no page: add it with --latents ' + r.latent;
    el.appendChild(box);
  }
  const nums = document.createElement('div');
  nums.className = 'nums';
  nums.textContent = r.dead ? 'never fires' : `fires on ${fmt(100 * r.freq, 2)}% of tokens \\u00b7 max ${fmt(r.max, 3)} \\u00b7 mean ${fmt(r.mean, 3)}`;
  el.appendChild(nums);
  return el;
}
function badge(){
  const b = document.createElement('span');
  b.className = 'badge'; b.textContent = 'dense'; b.title = DENSE;
  return b;
}
function nameLine(name){
  const n = document.createElement('div');
  if (name === null) { n.className = 'name unexplained'; n.textContent = 'unexplained'; n.title = 'named automatically: no label matched it'; return n; }
  n.className = 'name'; n.textContent = name.text + ' ';
  const f = document.createElement('span');
  f.className = 'f1'; f.textContent = 'F1 ' + name.f1.toFixed(2);
  n.appendChild(f);
  return n;
}
function row(r){
  const tr = document.createElement('tr');
  if (r.dead) tr.className = 'dead';
  const name = r.page ? `<a href="latents/${r.latent}.html">${r.latent}</a>` : String(r.latent) + (r.dead ? ' (dead)' : '');
  tr.innerHTML = `<td>${name}</td><td>${r.freq.toExponential(2)}</td><td>${r.dead ? '-inf' : r.log10_freq.toFixed(2)}</td>` +
    `<td>${r.mean.toFixed(3)}</td><td>${r.max.toFixed(3)}</td>`;
  if (r.dense) tr.firstChild.appendChild(badge());
  const named = document.createElement('td');
  named.className = 'note';
  if (r.name !== undefined) named.appendChild(nameLine(r.name));
  tr.appendChild(named);
  const note = document.createElement('td');
  note.className = 'note'; note.textContent = r.note || '';
  tr.appendChild(note);
  return tr;
}
function band(){
  const svg = $('plot'), rect = svg && svg.querySelector('.band');
  if (!rect) return;
  const [x0, x1] = JSON.parse(svg.dataset.xdomain), [p0, p1] = JSON.parse(svg.dataset.xpx);
  const lo = num('lo'), hi = num('hi');
  if (lo === null && hi === null) { rect.setAttribute('width', 0); return; }
  const px = v => Math.min(p1, Math.max(p0, p0 + (v - x0) / (x1 - x0) * (p1 - p0)));
  const a = px(lo === null ? x0 : lo), b = px(hi === null ? x1 : hi);
  rect.setAttribute('x', a); rect.setAttribute('width', Math.max(0, b - a));
}
function render(){
  const matched = matching(), table = tableView();
  const shown = sorted(hidesDense() ? matched.filter(r => !r.dense) : matched);
  const hidden = matched.length - shown.length;
  $('count').textContent = shown.length + ' of ' + rows.length + ' latents' + (hidden ? ` (${hidden} dense hidden)` : '');
  const ids = new Set(shown.map(r => r.latent));
  for (const [s, c] of points) c.classList.toggle('off', !ids.has(s));
  band();
  const frag = document.createDocumentFragment();
  for (const r of shown.slice(0, limit)) frag.appendChild(table ? row(r) : card(r));
  $('cards').hidden = table; $('latents').hidden = !table;
  (table ? document.querySelector('#latents tbody') : $('cards')).replaceChildren(frag);
  (table ? $('cards') : document.querySelector('#latents tbody')).replaceChildren();
  $('more').hidden = shown.length <= limit;
  $('dir').textContent = desc ? '\\u2193 descending' : '\\u2191 ascending';
  $('sort').value = key;
}
document.querySelectorAll('#latents th').forEach(th => th.addEventListener('click', () => {
  desc = th.dataset.key === key ? !desc : true; key = th.dataset.key; render();
}));
$('sort').addEventListener('input', () => { key = $('sort').value; desc = key !== 'latent'; render(); });
$('dir').addEventListener('click', () => { desc = !desc; render(); });
for (const id of ['lo', 'hi', 'dead', 'q', 'rendered', 'first', 'showdense']) $(id).addEventListener('input', () => { limit = PAGE; render(); });
document.querySelectorAll('input[name=view]').forEach(el => el.addEventListener('input', render));
$('more').addEventListener('click', () => { limit += PAGE; render(); });
render();
"""


@dataclasses.dataclass(frozen=True)
class TopImage:
    rank: int
    image_i: int
    value: float
    original: str
    """Path of the thumbnail of the crop the model saw, relative to the gallery folder."""
    heatmap: str | None
    """Path of the same crop with the latent's spotlight; None when there is none (ranked by [CLS],
    or the image is missing)."""
    size: tuple[int, int]
    """Thumbnail width and height in pixels."""
    source: str
    label: str | None
    missing: bool


@dataclasses.dataclass(frozen=True)
class StripImage:
    """One image of a latent's quantile strip."""

    image_i: int
    value: float
    percentile: float
    """Where its score lies among the images the latent fires on (0 to 100)."""
    thumb: str
    """Path of its thumbnail (spotlit on its own scale when there are heatmaps), relative to the gallery."""
    size: tuple[int, int]
    source: str
    label: str | None
    missing: bool


@dataclasses.dataclass(frozen=True)
class Strip:
    images: list[StripImage]
    """Sampled uniformly from the images the latent fires on, by ascending score."""
    n_images: int
    """Images the latent fires on."""
    deciles: list[float]
    """The 10th, 20th, ..., 90th percentiles of their scores (from a histogram)."""


@dataclasses.dataclass(frozen=True)
class Relation:
    latent: int
    value: float
    page: bool
    """Whether the other latent has a page to link to."""


SOURCES = {
    "concept": "the concept labels",
    "mask": "the mask labels",
    "label": "the class labels",
    "text": "zero-shot words",
}
"""How a name's `source` reads on a page ("from ...")."""


@dataclasses.dataclass(frozen=True)
class Name:
    """A latent's automatic name and how well `code > 0` detects it on held-out images."""

    text: str
    source: str
    level: str
    f1: float
    precision: float
    recall: float

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "Name":
        """The name in `obj` (a name object of latents.json); ConfigError naming `where` when it is not one."""
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: a name must be an object or null, not {type(obj).__name__}.")
        fields = {}
        for key in ("text", "source", "level"):
            if not isinstance(obj.get(key), str):
                raise ConfigError(f"{where}: the name's {key!r} must be text, got {obj.get(key)!r}.")
            fields[key] = obj[key]
        for key in ("f1", "precision", "recall"):
            x = obj.get(key)
            if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x <= 1:
                raise ConfigError(f"{where}: the name's {key!r} must be a number from 0 to 1, got {x!r}.")
            fields[key] = float(x)
        return cls(**fields)

    def describe(self) -> str:
        """E.g. "F1 0.84 (precision 0.80, recall 0.88) on held-out images, patch by patch, from the concept labels"."""
        return (
            f"F1 {self.f1:.2f} (precision {self.precision:.2f}, recall {self.recall:.2f}) on held-out images, "
            f"{self.level} by {self.level}, from {SOURCES.get(self.source, self.source)}"
        )


@dataclasses.dataclass(frozen=True)
class HeadEffect:
    """What adding a latent's decoder direction does to one head's logits (`saev.steering.lens`)."""

    head: str
    scale: float
    """The multiple of the decoder direction added (the latent's mean activation when firing)."""
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "HeadEffect":
        """The effect in `obj` (`LatentLens.to_json()`); ConfigError naming `where` when it is not one."""
        try:

            def rows(key: str) -> list[tuple[str, float]]:
                return [(str(r["class"]), float(r["logit_delta"])) for r in obj[key]]

            return cls(str(obj["head"]), float(obj["scale"]), rows("promoted"), rows("suppressed"))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where}: not a head effect ({type(err).__name__}: {err}).") from None


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
    heat_max: float | None = None
    """The activation at full brightness in this page's heatmaps (None: no heatmaps)."""
    figures: list[Figure] = dataclasses.field(default_factory=list)
    strip: Strip | None = None
    neighbours: list[Relation] = dataclasses.field(default_factory=list)
    """Nearest latents by decoder-direction cosine."""
    cooccur: list[Relation] = dataclasses.field(default_factory=list)
    """Latents most often firing where this one fires, with P(other fires | this fires)."""
    cooccur_tokens: int = 0
    """Tokens the co-occurrences were counted over."""
    scored: bool = False
    """Whether automatic naming scored this latent (then `name` None means unexplained)."""
    name: Name | None = None
    dense: bool = False
    effects: list[HeadEffect] = dataclasses.field(default_factory=list)
    """Its direct effect on each head given to `saev visuals --head`."""


def write_index(
    out: pathlib.Path,
    rows: list[dict[str, Any]],
    title: str,
    subtitle: str,
    about: str,
    thumb: tuple[int, int],
) -> pathlib.Path:
    """`rows` are latents.json's statistics plus `page`, `note`, `n_images` (thumbnails written) and,
    for latents that automatic naming scored, `name`; `about` is HTML saying which latents have
    pages and how to add others."""
    data = json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")
    headers = [
        ("latent", "latent"),
        ("freq", "frequency"),
        ("log10_freq", "log10 frequency"),
        ("mean", "mean when firing"),
        ("max", "max"),
        ("name", "name"),
        ("note", "note"),
    ]
    ths = "".join(f'<th data-key="{k}">{html.escape(label)}</th>' for k, label in headers)
    sorts = "".join(
        f'<option value="{k}">{label}</option>'
        for k, label in [
            ("freq", "frequency"),
            ("max", "max activation"),
            ("mean", "mean activation"),
            ("latent", "latent id"),
        ]
    )
    n_dead = sum(bool(r["dead"]) for r in rows)
    n_dense = sum(bool(r["dense"]) for r in rows)
    plotted = [r for r in rows if r["freq"] > 0 and r["mean"] > 0]
    caption = (
        f"Each point is one of the {len(plotted):,} live latents: filled points have a page (click to open it; "
        "orange ones carry a note), hollow ones do not."
        + (f" Dead latents (never firing) are not plotted: {n_dead:,}." if n_dead else "")
        + " Latents filtered out below are faded."
    )
    body = f"""<h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>
<div class="overview"><figure class="plot"><h2>Firing frequency against mean activation</h2>{scatter_svg(plotted)}
<figcaption>{html.escape(caption)}</figcaption></figure><div class="about">{about}</div></div>
<h2>Latents</h2>
<div class="controls"><label>sort by <select id="sort">{sorts}</select></label><button id="dir" type="button"></button>
<label><input id="first" type="checkbox" checked> pages first</label>
<label><input id="rendered" type="checkbox"> only latents with pages</label>
<label>log10 frequency from <input id="lo" type="number" step="0.5"> to <input id="hi" type="number" step="0.5"></label>
<label>search <input id="q" type="search" size="16" placeholder="name, note or id"></label>
<label><input id="dead" type="checkbox"> show dead</label>
<label title="{html.escape(DENSE_DEFINITION)}"><input id="showdense" type="checkbox"> show dense ({n_dense:,})</label>
<span>view <label><input type="radio" name="view" value="cards" checked> cards</label> <label><input type="radio" name="view" value="table"> table</label></span>
<span id="count"></span></div>
<div id="cards" class="cards"></div>
<table id="latents" hidden><thead><tr>{ths}</tr></thead><tbody></tbody></table><p><button id="more" hidden>show more</button></p>
<script id="data" type="application/json">{data}</script><script id="dense" type="application/json">{json.dumps(DENSE_DEFINITION)}</script><script id="thumb" type="application/json">{json.dumps(list(thumb))}</script>
<script>{INDEX_JS}</script>"""
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
    figures = "".join(_figure(img, sort_by) for img in page.images)
    note = f"<p><strong>{html.escape(page.note)}</strong></p>" if page.note else ""
    if page.name is not None:
        named = f'<p class="latname">{html.escape(page.name.text)} <span class="how">\u2014 {html.escape(page.name.describe())}</span></p>'
    elif page.scored:
        named = '<p class="latname unexplained">unexplained: automatic naming found no label it detects</p>'
    else:
        named = ""
    dense = f' <span class="badge" title="{html.escape(DENSE_DEFINITION)}">dense</span>' if page.dense else ""
    if page.heat_max is not None:
        how = (
            "Each image twice: the crop the model saw, and the same crop darkened where this latent is weak, "
            f"its strongest patches (at least {OUTLINE_LEVEL:.0%} of {page.heat_max:.3g}) outlined in white."
        )
        scale = f'<div><h2>Heatmap scale</h2>{colour_scale_svg(page.heat_max)}<p class="legend">{html.escape(how)}</p></div>'
        pairs = " (left: the crop the model saw; right: where the latent fires)"
    else:
        scale = pairs = ""
    body = f"""<div class="nav">{" | ".join(nav)}</div><h1>Latent {page.latent}{dense}</h1>{named}{note}{stats}
{_related(page)}{_effects(page.effects)}
<div class="charts"><div><h2>Activations when firing</h2>{histogram_svg(page.hist_counts, page.hist_edges)}</div>{scale}</div>
{_strip(page.strip, sort_by) if page.strip is not None else ""}
<h2>Top {len(page.images)} images{pairs}</h2><div class="grid">{figures}</div>{"".join(_extra(f) for f in page.figures)}"""
    _write(out / "latents" / f"{page.latent}.html", _page(f"Latent {page.latent}", body))


_RANKED_BY = {
    "patch": "maximum activation over patches",
    "img": "sum of activations over patches",
    "cls": "activation on the [CLS] token",
}
_VALUE_NAME = {"patch": "max", "img": "sum", "cls": "[CLS]"}


def _effects(effects: list[HeadEffect]) -> str:
    """A logit lens per head: the classes the latent's direction raises and lowers, through the rest of the model."""
    if not effects:
        return ""

    def cells(rows: list[tuple[str, float]]) -> str:
        return ", ".join(f"{html.escape(c)} ({d:+.2f})" for c, d in rows) or "none"

    body = "".join(
        f"<tr><td>{html.escape(e.head)}</td><td>{cells(e.promoted)}</td><td>{cells(e.suppressed)}</td></tr>"
        for e in effects
    )
    blurb = (
        f"The latent's decoder direction times its mean activation when firing ({effects[0].scale:.3g}) added to "
        "every token the SAE reads, the rest of the model run, and each class's logit change averaged over "
        "sample images (and patches, for a patch head)."
    )
    return (
        '<div class="effects"><h2>Direct effect on the heads (logit lens)</h2><table class="stats">'
        f"<tr><th>head</th><th>promotes (logit change)</th><th>suppresses</th></tr>{body}</table>"
        f'<p class="legend">{html.escape(blurb)}</p></div>'
    )


def _related(page: LatentPage) -> str:
    """The nearest latents by decoder direction and the latents firing with this one, linked when
    they have pages."""

    def table(title: str, rows: list[Relation], head: str, fmt: str, blurb: str) -> str:
        def name(r: Relation) -> str:
            return f'<a href="{r.latent}.html">latent {r.latent}</a>' if r.page else f"latent {r.latent}"

        cells = "".join(f'<tr><td>{name(r)}</td><td class="num">{r.value:{fmt}}</td></tr>' for r in rows)
        body = f"<table><tr><th>latent</th><th>{head}</th></tr>{cells}</table>" if rows else "<p>none</p>"
        return f"<div><h2>{title}</h2>{body}<p>{html.escape(blurb)}</p></div>"

    return (
        '<div class="related">'
        + table(
            "Nearest latents",
            page.neighbours,
            "cosine",
            ".3f",
            "By the cosine between decoder directions (what each latent adds to the reconstruction).",
        )
        + table(
            "Fires together with",
            page.cooccur,
            "P(fires | this fires)",
            ".0%",
            f"Among the patch tokens where this latent fires, the share where the other fires too, counted "
            f"over {page.cooccur_tokens:,} patch tokens (whole images spread evenly through the store).",
        )
        + "</div>"
    )


def _strip(strip: Strip, sort_by: str) -> str:
    """The quantile strip: images sampled across the latent's firing distribution, weakest first."""
    if not strip.images:
        return ""
    what = _RANKED_BY[sort_by]
    tiles = []
    for img in strip.images:
        w, h = img.size
        name = (pathlib.PurePath(img.source).name or img.source) + (" (image missing)" if img.missing else "")
        label = f'<span class="name">{html.escape(str(img.label))}</span>' if img.label else ""
        tiles.append(
            f'<figure><img src="../{html.escape(img.thumb)}" width="{w}" height="{h}" loading="lazy" '
            f'alt="image {img.image_i}, {img.percentile:.0f}th percentile">'
            f'<figcaption><span class="pct">p{img.percentile:.0f}</span><span class="val">{_VALUE_NAME[sort_by]} {img.value:.3g}</span>'
            f'<span class="name" title="{html.escape(img.source, quote=True)}">{html.escape(name)}</span>{label}</figcaption></figure>'
        )
    deciles = " \u00b7 ".join(f"p{10 * (d + 1)} {v:.3g}" for d, v in enumerate(strip.deciles))
    spotlit = " Each image is spotlit on its own scale." if sort_by != "cls" else ""
    legend = (
        f"{len(strip.images)} of the {strip.n_images:,} images where this latent fires, drawn at random and sorted by "
        f"{what}, weakest first: on average the k-th of nine sits at the (10k)th percentile. Each caption gives the "
        f"image's percentile (pN) among those images and its value.{spotlit} Deciles: {deciles}."
    )
    return (
        f'<h2>Quantile strip</h2><div class="strip">{"".join(tiles)}</div>'
        f'<p class="legend">{html.escape(legend)}</p>'
    )


def _extra(fig: Figure) -> str:
    return (
        f'<h2>{html.escape(fig.title)}</h2><figure class="wide"><img src="../{html.escape(fig.src)}" alt="{html.escape(fig.title)}">'
        f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
    )


def _figure(img: TopImage, sort_by: str) -> str:
    w, h = img.size

    def tag(src: str, alt: str) -> str:
        return f'<img src="../{html.escape(src)}" width="{w}" height="{h}" alt="{html.escape(alt)}">'

    if img.heatmap is None:
        pictures = f'<div class="single">{tag(img.original, f"image {img.image_i}")}</div>'
    else:
        pictures = (
            f'<div class="pair">{tag(img.original, f"image {img.image_i}")}'
            f"{tag(img.heatmap, f'image {img.image_i}, where the latent fires')}</div>"
        )
    name = pathlib.PurePath(img.source).name or img.source
    if img.missing:
        name += " (image missing)"
    source = html.escape(img.source, quote=True)
    link = (
        f'<a class="name" href="{html.escape(pathlib.Path(img.source).as_uri())}" title="{source}">{html.escape(name)}</a>'
        if pathlib.PurePath(img.source).is_absolute() and not img.missing
        else f'<span class="name" title="{source}">{html.escape(name)}</span>'
    )
    label = f'<span class="val">{html.escape(str(img.label))}</span>' if img.label else ""
    return (
        f"<figure>{pictures}<figcaption>#{img.rank + 1} {link}"
        f'<span class="val">{_VALUE_NAME[sort_by]} {img.value:.3g}</span>{label}</figcaption></figure>'
    )


@dataclasses.dataclass(frozen=True)
class LogScale:
    """Maps values in [10**lo, 10**hi] to pixels in [px_lo, px_hi] (px_hi < px_lo for an upward y axis)."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float

    def __call__(self, value: float) -> float:
        return self.px_lo + (math.log10(value) - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)

    def ticks(self) -> list[tuple[float, str]]:
        """Round values inside the domain with their labels: powers of ten over wide domains, 1-2-5
        steps over narrow ones (and finer steps when those are too few)."""
        decades = range(math.floor(self.lo), math.ceil(self.hi) + 1)
        inside = 10**self.lo * (1 - 1e-9), 10**self.hi * (1 + 1e-9)
        if self.hi - self.lo > 2.5:
            step = math.ceil(len(decades) / 8)  # at most about eight labels
            return [
                (10.0**k, _power_of_ten(k))
                for k in decades
                if k % step == 0 and inside[0] <= 10.0**k <= inside[1]
            ]
        for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
            values = [
                m * 10.0**k for k in decades for m in mantissas if inside[0] <= m * 10.0**k <= inside[1]
            ]
            if len(values) >= 3:
                break
        return [(v, f"{v:g}") for v in values]


def _power_of_ten(k: int) -> str:
    sup = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")
    return "1" if k == 0 else "10" if k == 1 else "10" + str(k).translate(sup)


def _log_domain(values: list[float]) -> tuple[float, float]:
    """log10 bounds around `values`, padded by 5% (and at least half a decade wide)."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    centre, half = (lo + hi) / 2, max(hi - lo, 0.5) / 2 * 1.1
    return centre - half, centre + half


PLOT_SIZE = (640, 360)
PLOT_MARGIN = (64, 16, 16, 48)
"""Left, top, right and bottom margins of the scatter plot's axes box, in pixels."""


def scatter_svg(
    rows: list[dict[str, Any]],
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> str:
    """Each latent of `rows` (its `freq` and `mean` > 0) as a point on log-log axes, inline SVG.

    Points of latents with a page link to it. `x_range` and `y_range` fix the axes' domains
    (frequency and mean activation; default: the data's, padded)."""
    width, height = PLOT_SIZE
    left, top, right, bottom = PLOT_MARGIN
    if not rows:
        return '<p id="plot">no latent fires</p>'
    xlo, xhi = map(math.log10, x_range) if x_range else _log_domain([r["freq"] for r in rows])
    ylo, yhi = map(math.log10, y_range) if y_range else _log_domain([r["mean"] for r in rows])
    x = LogScale(xlo, xhi, left, width - right)
    y = LogScale(ylo, yhi, height - bottom, top)
    parts = [
        _axes(
            (left, top, width - right, height - bottom),
            [(x(v), label) for v, label in x.ticks()],
            [(y(v), label) for v, label in y.ticks()],
            "firing frequency (fraction of tokens, log scale)",
            "mean activation when firing (log scale)",
        )
    ]
    parts.append(f'<rect class="band" x="{left}" y="{top}" width="0" height="{height - top - bottom}"/>')
    # Points without pages first, so the linked ones are drawn on top and stay clickable.
    for r in sorted(rows, key=lambda r: (r["page"], bool(r["note"]))):
        cx, cy = x(r["freq"]), y(r["mean"])
        tip = f"latent {r['latent']}: frequency {r['freq']:.2e}, mean {r['mean']:.3g}, max {r['max']:.3g}"
        if r.get("name"):
            tip += f" \u2014 {r['name']['text']} (F1 {r['name']['f1']:.2f})"
        if r["note"]:
            tip += f" \u2014 {r['note']}"
        point = (
            f'<circle class="{"pt noted" if r["note"] else "pt"}" data-latent="{r["latent"]}" cx="{cx:.1f}" cy="{cy:.1f}" r="4.5">'
            if r["page"]
            else f'<circle class="np" data-latent="{r["latent"]}" cx="{cx:.1f}" cy="{cy:.1f}" r="2.5">'
        )
        point += f"<title>{html.escape(tip)}</title></circle>"
        parts.append(f'<a href="latents/{r["latent"]}.html">{point}</a>' if r["page"] else point)
    return (
        f'<svg id="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="firing frequency against mean activation, one point per latent" '
        f'data-xdomain="[{xlo},{xhi}]" data-xpx="[{left},{width - right}]" font-size="11">{"".join(parts)}</svg>'
    )


def _axes(
    box: tuple[float, float, float, float],
    xticks: list[tuple[float, str]],
    yticks: list[tuple[float, str]],
    xlabel: str,
    ylabel: str,
) -> str:
    """Frame, grid lines, tick marks and labels, and axis titles of a plot whose axes box has the
    pixel corners `box` (left, top, right, bottom); each tick is (pixel position, label)."""
    x0, y1, x1, y0 = box
    out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#bbb"/>']
    for px, label in xticks:
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y1}" y2="{y0}" stroke="#ececec"/>')
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y0}" y2="{y0 + 4}" stroke="#888"/>')
        out.append(
            f'<text class="xtick" x="{px:.1f}" y="{y0 + 16}" text-anchor="middle" fill="#444">{label}</text>'
        )
    for py, label in yticks:
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="#ececec"/>')
        out.append(f'<line x1="{x0 - 4}" x2="{x0}" y1="{py:.1f}" y2="{py:.1f}" stroke="#888"/>')
        out.append(
            f'<text class="ytick" x="{x0 - 7}" y="{py + 4:.1f}" text-anchor="end" fill="#444">{label}</text>'
        )
    out.append(
        f'<text class="xlabel" x="{(x0 + x1) / 2:.1f}" y="{y0 + 34}" text-anchor="middle" fill="#222">{html.escape(xlabel)}</text>'
    )
    out.append(
        f'<text class="ylabel" transform="translate(14 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" fill="#222">{html.escape(ylabel)}</text>'
    )
    return "".join(out)


def _count_ticks(top: int) -> list[int]:
    """0 and multiples of the smallest 1-2-5 step that needs at most five, up to the first at or above `top`."""
    raw = max(top / 5, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))
    return list(range(0, top + step, step))


def histogram_svg(counts: list[int], edges: list[float], width: int = 520, height: int = 220) -> str:
    """Bars of a log-binned histogram, trimmed to the occupied bins, with labelled axes, as inline SVG."""
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return "<p>never fires</p>"
    left, top_m, right, bottom = 60, 10, 14, 46
    lo, hi = nonzero[0], nonzero[-1] + 1
    x = LogScale(math.log10(edges[lo]), math.log10(edges[hi]), left, width - right)
    yticks = _count_ticks(max(counts[lo:hi]))
    ymax = yticks[-1]
    y0, y1 = height - bottom, top_m

    def py(c: float) -> float:
        return y0 - c / ymax * (y0 - y1)

    bars = "".join(
        f'<rect x="{x(edges[lo + i]):.1f}" y="{py(c):.1f}" width="{max(x(edges[lo + i + 1]) - x(edges[lo + i]) - 1, 1):.1f}" '
        f'height="{y0 - py(c):.1f}" fill="#5b6abf"><title>{edges[lo + i]:.3g} to {edges[lo + i + 1]:.3g}: {c:,} tokens</title></rect>'
        for i, c in enumerate(counts[lo:hi])
    )
    axes = _axes(
        (left, y1, width - right, y0),
        [(x(v), label) for v, label in x.ticks()],
        [(py(t), f"{t:,}") for t in yticks],
        "activation (log scale)",
        "count (tokens)",
    )
    return (
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-size="11" '
        f'role="img" aria-label="activation histogram">{axes}{bars}</svg>'
    )


def colour_scale_svg(vmax: float, width: int = 380, height: int = 52) -> str:
    """The heatmaps' brightness scale from 0 to `vmax`, with the outline's threshold marked."""
    left, right, top, bar_h = 16, 16, 8, 18
    span = width - left - right
    fractions = np.linspace(0, 1, 11)
    # The same brightness factors as the thumbnails, applied to a light grey.
    stops = "".join(
        f'<stop offset="{f:.2f}" stop-color="rgb({g:.0f},{g:.0f},{g:.0f})"/>'
        for f, g in zip(fractions, 235 * spotlight_gain(fractions), strict=True)
    )
    at = left + OUTLINE_LEVEL * span
    ticks = "".join(
        f'<line x1="{left + f * span:.1f}" x2="{left + f * span:.1f}" y1="{top + bar_h}" y2="{top + bar_h + 5}" stroke="#444"/>'
        f'<text class="tick" x="{left + f * span:.1f}" y="{top + bar_h + 18}" text-anchor="middle" fill="#444">{f * vmax:.3g}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1)
    )
    outline = "".join(
        f'<rect x="{at:.1f}" y="{top}" width="{width - right - at:.1f}" height="{bar_h}" fill="none" stroke="{colour}" stroke-width="{w}"/>'
        for colour, w in (("#141414", 4), ("#fff", 2))
    )
    return (
        f'<svg class="scale" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-size="11" role="img" '
        f'aria-label="heatmap scale: activation 0 to {vmax:.3g}, outlined from {OUTLINE_LEVEL * vmax:.3g}">'
        f'<defs><linearGradient id="spot">{stops}</linearGradient></defs>'
        f'<rect x="{left}" y="{top}" width="{span}" height="{bar_h}" fill="url(#spot)"/>{outline}{ticks}</svg>'
    )


def _page(title: str, body: str) -> str:
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n'


def _write(path: pathlib.Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
