"""Top-activating examples and the dashboard: exact against brute force, contexts read back, page parsed for its parts."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from _features_util import harvest_cache, one_thread, run_cli, sae_folder, text_file, tiny_model_dir  # noqa: E402,F401

import saelab  # noqa: E402
from saelab.errors import ConfigError, SaelabError  # noqa: E402
from saelab.features.dashboard import render_dashboard, write_dashboard  # noqa: E402
from saelab.features.data import load_feature_data  # noqa: E402
from saelab.features.examples import (  # noqa: E402
    ExamplesConfig,
    build_examples,
    examples_section,
    scan_latents,
    select_latents,
)
from saelab.features.logit_effect import direct_logit_effect, unembedding  # noqa: E402
from saelab.sources.lm import model as hf  # noqa: E402


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ex")
    model = tiny_model_dir(root, "gpt2")
    cache = harvest_cache(model, text_file(root, lines=80), root / "cache", tokens=900)
    sae_dir = sae_folder(root / "sae", method="topk", k=4)
    data = load_feature_data(cache)
    sae = saelab.load(sae_dir)
    codes = sae.encode(torch.from_numpy(data.store.read_range(0, data.store.n_rows))).detach().numpy()
    return root, model, cache, sae_dir, data, sae, codes


def test_scan_is_exact(lm_setup):
    _, _, _, _, data, sae, codes = lm_setup
    latents = [0, 3, 7, 11]
    cfg = ExamplesConfig(n_top=5, sample_size=8, batch_size=128)  # several batches: the running merge is exercised
    scan = scan_latents(sae, data, latents, (0, data.store.n_rows), cfg)
    for j, l in enumerate(latents):
        col = codes[:, l]
        assert int(scan.count[j]) == int((col > 0).sum())
        np.testing.assert_allclose(scan.top_vals[j].numpy(), np.sort(col)[::-1][:5], rtol=1e-6)
        np.testing.assert_allclose(col[scan.top_rows[j].numpy()], scan.top_vals[j].numpy(), rtol=1e-6)
        assert int(scan.hist[j].sum()) == int((col > 0).sum())
        ok = torch.isfinite(scan.sample_keys[j])
        rows = scan.sample_rows[j][ok].numpy()
        assert len(set(rows)) == len(rows) == min(8, int((col > 0).sum()))
        assert (col[rows] > 0).all()
        np.testing.assert_allclose(col[rows], scan.sample_vals[j][ok].numpy(), rtol=1e-6)


def test_contexts_and_numbers(lm_setup):
    _, _, _, _, data, sae, codes = lm_setup
    res = build_examples(sae, data, [1, 2], ExamplesConfig(n_top=4, before=3, after=2))
    for lat in res.latents:
        col = codes[:, lat.latent]
        assert lat.density == pytest.approx((col > 0).mean()) and lat.max == pytest.approx(col.max(), rel=1e-6)
        assert lat.mean == pytest.approx(col[col > 0].mean(), rel=1e-5)
        assert sum(lat.hist_counts) == lat.count and len(lat.hist_edges) == len(lat.hist_counts) + 1
        assert lat.hist_edges[0] <= col[col > 0].min() and lat.hist_edges[-1] >= col.max()
        for c in lat.top + tuple(x for q in lat.quantiles for x in q.contexts):
            w, p = int(data.grid.row_window[c.row]), int(data.grid.row_position[c.row])
            assert c.tokens[c.focus] == data.grid.tokens[w, p] and c.acts[c.focus] == pytest.approx(
                c.activation, rel=1e-5
            )
            assert list(c.tokens) == data.grid.tokens[w, max(0, p - 3) : p + 3].tolist()
            for tok_row, a in zip(data.grid.rows[w, max(0, p - 3) : p + 3], c.acts):
                assert a == pytest.approx(codes[tok_row, lat.latent] if tok_row >= 0 else 0.0, rel=1e-5, abs=1e-7)
        # Quantile bins run from low to high activations.
        los = [q.lo for q in lat.quantiles]
        assert los == sorted(los) and all(q.lo <= q.hi for q in lat.quantiles)
    assert all(str(t) in res.tokens for l in res.latents for c in l.top for t in c.tokens)
    json.dumps(res.to_dict(), allow_nan=False)


def test_direct_logit_effect_by_hand(lm_setup):
    _, model, _, _, _, sae, _ = lm_setup
    lm = hf.load_lm(model)
    W_U, gamma = unembedding(lm.model)
    assert torch.equal(gamma, lm.model.transformer.ln_f.weight.float())
    d = sae.W_dec.detach()[[4, 9]]
    (prom, supp), _ = direct_logit_effect(W_U, gamma, d, 3)
    eff = (d[0] / d[0].norm() * gamma) @ lm.model.lm_head.weight.T
    assert [t for t, _ in prom] == eff.topk(3).indices.tolist()
    assert [t for t, _ in supp] == (-eff).topk(3).indices.tolist()
    assert prom[0][1] == pytest.approx(float(eff.max()), rel=1e-5)


def test_select_latents():
    counts = np.array([5, 0, 9, 2, 0, 9])
    assert select_latents("top-fired", 6, 3, counts) == [2, 5, 0]
    assert select_latents("top-fired", 6, 10, counts) == [2, 5, 0, 3]  # never-firing latents are left out
    assert set(select_latents("random", 6, 10, counts, seed=1)) == {0, 2, 3, 5}
    assert select_latents("list", 6, [3, 3, 1]) == [3, 1]
    with pytest.raises(ConfigError, match="latents=\\[6\\]"):
        select_latents("list", 6, [6])


class _Parts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.items, self.search, self.data, self.urls, self.in_data = [], [], None, "", [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("type") == "search":
            self.search = a
        if tag == "li" and "data-latent" in a:
            self.items.append(a)
        if tag == "script" and a.get("id") == "latent-data":
            self.in_data = True
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_data = False

    def handle_data(self, data):
        if self.in_data:
            self.data += data


def test_dashboard_page_parts(lm_setup, tmp_path):
    _, _, _, _, data, sae, _ = lm_setup
    res = build_examples(sae, data, [0, 5, 8], ExamplesConfig(n_top=3))
    # A token that would end the script element if written raw must not break the page.
    res.tokens[next(iter(res.tokens))] = "</script><b>x"
    json_path, html_path = write_dashboard(res, tmp_path / "d")
    page = html_path.read_text()
    parts = _Parts()
    parts.feed(page)
    assert parts.search is not None and [i["data-latent"] for i in parts.items] == ["0", "5", "8"]
    assert json.loads(parts.data) == json.loads(json_path.read_text())
    assert not parts.urls and "http://" not in page and "https://" not in page  # nothing fetched: works offline
    assert "</script><b>" not in parts.data and "<script>" in page and "addEventListener('input'" in page
    assert all("data-search" in i for i in parts.items)
    assert render_dashboard(res.to_dict()) == page
    sec = examples_section(res)
    assert sec.id == "latent-examples" and "| latent |" in sec.markdown


def test_examples_command(lm_setup, tmp_path, capsys):
    _, _, cache, sae_dir, _, _, _ = lm_setup
    out = tmp_path / "dash"
    assert (
        run_cli(
            [
                "lm",
                "examples",
                "--sae",
                sae_dir,
                "--activations",
                cache,
                "--top-fired",
                "6",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads((out / "examples.json").read_text())
    assert info["latents"] == 6 == len(data["latents"]) and data["selection"] == "top-fired 6"
    assert all(l["promoted"] and l["suppressed"] for l in data["latents"])
    counts = [l["count"] for l in data["latents"]]
    assert counts == sorted(counts, reverse=True)
    with pytest.raises(SaelabError, match="already holds examples.json"):
        run_cli(["lm", "examples", "--sae", sae_dir, "--activations", cache, "--latents", "1", "--out", str(out)])
    with pytest.raises(ConfigError, match="latents='1,x'"):
        run_cli(
            [
                "lm",
                "examples",
                "--sae",
                sae_dir,
                "--activations",
                cache,
                "--latents",
                "1,x",
                "--out",
                str(out),
                "--overwrite",
            ]
        )


def test_othello_dashboard_has_board_maps(tmp_path, capsys):
    from saelab.sources.othello.auroc import auroc_matrix
    from saelab.sources.othello.harvest import HarvestConfig, harvest, write_harvest

    hv = harvest(HarvestConfig(layer=3, games=12, seed=5))
    write_harvest(hv, tmp_path / "oth")
    sae_dir = sae_folder(tmp_path / "sae", d_in=128, n_latents=32, method="relu", source=hv.source)
    out = tmp_path / "d"
    assert (
        run_cli(
            [
                "lm",
                "examples",
                "--sae",
                sae_dir,
                "--activations",
                str(tmp_path / "oth"),
                "--latents",
                "0,3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "examples.json").read_text())
    sae = saelab.load(sae_dir)
    codes = sae.encode(torch.from_numpy(hv.activations))[:, [0, 3]].detach()
    expect = auroc_matrix(codes, hv.labels).numpy().reshape(2, 64, 3)
    for j, lat in enumerate(data["latents"]):
        board = np.array([[np.nan if v is None else v for v in sq] for sq in lat["board_auroc"]])
        np.testing.assert_allclose(board, expect[j], atol=1e-4)
        c = lat["top"][0]
        assert all(len(data["tokens"][str(t)]) == 2 for t in c["tokens"])  # squares such as 'd3'
        assert all(len(data["tokens"][str(t)]) in (1, 2) for t, _ in lat["promoted"])  # a square, or '?' for padding
    assert "boardHtml" in (out / "dashboard.html").read_text()
