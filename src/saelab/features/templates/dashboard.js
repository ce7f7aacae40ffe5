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
