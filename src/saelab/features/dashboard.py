"""One self-contained HTML page of latent examples: an index with a search box, and each latent's contexts, histogram,
promoted tokens and (OthelloGPT) 8x8 board AUROC maps. Works offline from file://: the data are embedded in the page
(and written beside it as JSON); a small inline script draws the chosen latent.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from saelab.features.examples import ExamplesResult
from saelab.util.atomic import atomic_write_text, dumps_json

EXAMPLES_JSON = "examples.json"
DASHBOARD_HTML = "dashboard.html"

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222}
header{padding:10px 16px;border-bottom:1px solid #ddd;background:#fafafa}
header h1{font-size:18px;margin:0 0 4px}
.meta{color:#666;font-size:12px;margin:0}
#layout{display:flex;height:calc(100vh - 64px)}
#sidebar{width:300px;border-right:1px solid #ddd;display:flex;flex-direction:column}
#search{margin:8px;padding:6px;font-size:14px}
#index{list-style:none;margin:0;padding:0;overflow-y:auto;flex:1}
#index li{padding:4px 10px;border-bottom:1px solid #f0f0f0;cursor:pointer;font-size:12px}
#index li.active{background:#e8f0fe}
#index li .dens{color:#888;float:right}
#index li .toks{display:block;color:#555;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#detail{flex:1;overflow-y:auto;padding:12px 20px}
.ctx{font-family:ui-monospace,monospace;font-size:12px;white-space:pre;margin:2px 0;overflow-x:auto}
.ctx .v{display:inline-block;width:60px;color:#666;text-align:right;margin-right:8px}
.tok{border-radius:2px;box-shadow:inset -1px 0 #e4e4e4}
.tok.focus{outline:1.5px solid #c00}
.cols{display:flex;gap:24px;flex-wrap:wrap}
.logits td{font-family:ui-monospace,monospace;font-size:12px;padding:0 6px}
.boards{display:flex;gap:16px}
.board{border-collapse:collapse}
.board td{width:16px;height:16px;border:1px solid #eee;padding:0}
h2{font-size:16px;margin:8px 0}
h3{font-size:14px;margin:14px 0 4px}
"""

_JS = r"""
const D = JSON.parse(document.getElementById('latent-data').textContent);
const T = D.tokens;
const byId = new Map(D.latents.map(l => [String(l.latent), l]));
const esc = s => s.replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const show = id => { const t = T[String(id)]; return t === undefined ? '?' : t.replace(/\n/g, '\u21b5'); };
function ctxHtml(c, scale) {
  const toks = c.tokens.map((t, i) => {
    const a = c.acts[i], alpha = scale > 0 ? Math.min(1, Math.max(0, a / scale)) : 0;
    const cls = i === c.focus ? 'tok focus' : 'tok';
    return `<span class="${cls}" style="background:rgba(255,120,0,${alpha.toFixed(3)})" title="${a}">${esc(show(t))}</span>`;
  }).join('');
  return `<div class="ctx"><span class="v">${c.activation}</span>${toks}</div>`;
}
function histHtml(h) {
  if (!h.counts.length) return '<p class="meta">never fires</p>';
  const W = 360, H = 80, n = h.counts.length, m = Math.max(...h.counts);
  const bars = h.counts.map((c, i) => `<rect x="${(i * W / n).toFixed(1)}" y="${(H - H * c / m).toFixed(1)}" width="${Math.max(1, W / n - 1).toFixed(1)}" height="${(H * c / m).toFixed(1)}" fill="#4a7"><title>${h.edges[i]}–${h.edges[i + 1]}: ${c}</title></rect>`).join('');
  return `<svg width="${W}" height="${H + 16}" role="img" aria-label="activation histogram">${bars}<text x="0" y="${H + 13}" font-size="10">${h.edges[0]}</text><text x="${W}" y="${H + 13}" font-size="10" text-anchor="end">${h.edges[n]} (log scale)</text></svg>`;
}
function logitsHtml(l) {
  if (!l.promoted.length) return '';
  const rows = l.promoted.map((p, i) => { const s = l.suppressed[i] || ['', ''];
    return `<tr><td>${esc(show(p[0]))}</td><td>${p[1]}</td><td>${s[0] === '' ? '' : esc(show(s[0]))}</td><td>${s[1]}</td></tr>`; }).join('');
  return `<div><h3>Direct logit effect</h3><table class="logits"><tr><th>promotes</th><th></th><th>suppresses</th><th></th></tr>${rows}</table></div>`;
}
function boardHtml(b) {
  if (!b) return '';
  const names = ['empty', 'mine', 'theirs'];
  const one = s => { let r = '';
    for (let row = 7; row >= 0; row--) { r += '<tr>';
      for (let col = 0; col < 8; col++) { const v = b[row * 8 + col][s];
        const bg = v === null ? '#ddd' : (v >= 0.5 ? `rgba(200,30,30,${(2 * (v - 0.5)).toFixed(3)})` : `rgba(30,60,200,${(2 * (0.5 - v)).toFixed(3)})`);
        r += `<td style="background:${bg}" title="${'abcdefgh'[col]}${row + 1} ${names[s]}: ${v === null ? 'n/a' : v}"></td>`; }
      r += '</tr>'; }
    return `<div><div class="meta">${names[s]}</div><table class="board">${r}</table></div>`; };
  return `<h3>Board AUROC per (square, state)</h3><div class="boards">${[0, 1, 2].map(one).join('')}</div><p class="meta">red: higher where the square holds that state (AUROC → 1); blue: lower; grey: state never or always holds</p>`;
}
function render(id) {
  const l = byId.get(String(id)) || D.latents[0]; if (!l) return;
  id = l.latent;
  document.querySelectorAll('#index li').forEach(li => li.classList.toggle('active', li.dataset.latent === String(id)));
  const scale = l.max;
  let h = `<h2>Latent ${l.latent}</h2><p class="meta">fires on ${l.count} of ${D.rows_scanned} rows (density ${l.density.toExponential(2)}); max ${l.max}, mean when firing ${l.mean}</p>`;
  h += `<div class="cols"><div><h3>Activation histogram</h3>${histHtml(l.histogram)}</div>${logitsHtml(l)}</div>`;
  h += boardHtml(l.board_auroc);
  h += `<h3>Top activations</h3>` + l.top.map(c => ctxHtml(c, scale)).join('');
  l.quantiles.slice().reverse().forEach(q => {
    h += `<h3>Quantile ${Math.round(q.q_lo * 100)}–${Math.round(q.q_hi * 100)}% of non-zero activations (${q.lo}–${q.hi})</h3>` + q.contexts.map(c => ctxHtml(c, scale)).join('');
  });
  document.getElementById('detail').innerHTML = h;
}
document.getElementById('index').addEventListener('click', e => { const li = e.target.closest('li'); if (li) location.hash = 'latent-' + li.dataset.latent; });
window.addEventListener('hashchange', () => render(location.hash.replace('#latent-', '')));
document.getElementById('search').addEventListener('input', e => {
  const q = e.target.value.trim().toLowerCase();
  document.querySelectorAll('#index li').forEach(li => {
    li.hidden = q !== '' && !(li.dataset.latent === q || li.dataset.search.includes(q));
  });
});
render(location.hash ? location.hash.replace('#latent-', '') : (D.latents[0] || {}).latent);
"""


def _index_item(latent: dict, tokens: dict) -> str:
    """One entry of the latent index: id, density, the tokens it fires on most; searchable text in data-search."""
    seen: list[str] = []
    for c in latent["top"]:
        t = tokens.get(str(c["tokens"][c["focus"]]), "?")
        if t not in seen:
            seen.append(t)
    promoted = [tokens.get(str(t), "?") for t, _ in latent["promoted"]]
    search = " ".join([str(latent["latent"]), *seen, *promoted]).lower()
    shown = " · ".join(s.replace("\n", "↵") for s in seen[:5])
    return (f'<li data-latent="{latent["latent"]}" data-search="{html.escape(search)}">'
            f'<b>#{latent["latent"]}</b><span class="dens">{latent["density"]:.1e}</span>'
            f'<span class="toks">{html.escape(shown)}</span></li>')  # fmt: skip


def render_dashboard(data: dict, title: str = "Latent dashboard") -> str:
    """The page for an examples dict (ExamplesResult.to_dict()): index, search box, embedded data, inline script."""
    src = data.get("source", {})
    meta = f"{len(data['latents'])} latents · {data['rows_scanned']} rows of {src.get('activations')} · SAE {src.get('sae', '?')}"
    items = "\n".join(_index_item(l, data["tokens"]) for l in data["latents"])
    # "</" inside the JSON would end the script element early; "<\/" parses to the same string.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p></header>
<div id="layout">
<nav id="sidebar"><input type="search" id="search" placeholder="latent id or token" aria-label="search latents">
<ul id="index">
{items}
</ul></nav>
<main id="detail"><noscript>This page draws each latent with a small inline script; the data are also in {EXAMPLES_JSON} beside it.</noscript></main>
</div>
<script type="application/json" id="latent-data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_dashboard(
    result: ExamplesResult | dict, out: str | Path, title: str = "Latent dashboard"
) -> tuple[Path, Path]:
    """Write out/examples.json and out/dashboard.html (atomically); returns both paths."""
    data = result.to_dict() if isinstance(result, ExamplesResult) else result
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / EXAMPLES_JSON, out / DASHBOARD_HTML
    atomic_write_text(
        json_path, dumps_json(data, separators=(",", ":")) + "\n"
    )  # compact: a third of the indented size
    atomic_write_text(html_path, render_dashboard(data, title))
    return json_path, html_path
