"""1-d probes: Newton-Raphson against scipy's optimizer, a planted latent found, text tasks on known strings, the command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _features_util import one_thread, run_cli, sae_folder  # noqa: F401
from scipy.optimize import minimize

from saelab.errors import ConfigError, DataError
from saelab.features.data import TokenText
from saelab.features.probe1d import ProbeConfig, SparseCodes, auroc, fit_probes, probe_section, run_probes
from saelab.features.text_tasks import TASK_NAMES, TASKS, window_task_labels


def _codes(seed=0, n=2000, L=12, p=0.15):
    rng = np.random.default_rng(seed)
    return np.where(rng.random((n, L)) < p, rng.exponential(1.5, (n, L)), 0.0), rng


def _scipy_fit(z, y, l2):
    sd = z.std()

    def J(wb):
        eta = wb[0] * z + wb[1]
        return np.mean(np.logaddexp(0, eta) - y * eta) + 0.5 * l2 * (wb[0] * sd) ** 2

    def grad(wb):
        eta = wb[0] * z + wb[1]
        r = 1 / (1 + np.exp(-eta)) - y
        return np.array([np.mean(r * z) + l2 * sd**2 * wb[0], np.mean(r)])

    res = minimize(J, np.zeros(2), jac=grad, method="BFGS", options={"gtol": 1e-11, "maxiter": 10_000})
    return res.x, res.fun


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_newton_matches_an_independent_solver(l2):
    z, rng = _codes()
    z[:, 9] = 0.0  # a latent that never fires: only its bias can be fitted
    y_noisy = (rng.random(len(z)) < 1 / (1 + np.exp(-(1.2 * z[:, 2] - 1.5)))).astype(float)
    y_separable = (z[:, 4] > 0).astype(float)  # latent 4 separates the classes perfectly
    codes = SparseCodes.from_dense(torch.tensor(z))
    for y in (y_noisy, y_separable):
        fit = fit_probes(codes, y, ProbeConfig(l2=l2))
        for l in range(z.shape[1]):
            (w, b), f = _scipy_fit(z[:, l], y, l2)
            assert float(fit.objective[l]) <= f + 1e-9, l  # Newton's optimum is at least as good
            assert float(fit.objective[l]) == pytest.approx(f, abs=1e-8), l
            if l != 9:
                assert float(fit.w[l]) == pytest.approx(w, rel=1e-3, abs=1e-4), l
            assert float(fit.b[l]) == pytest.approx(b, rel=1e-3, abs=1e-4), l
        assert float(fit.w[9]) == 0.0 and float(fit.b[9]) == pytest.approx(np.log(y.mean() / (1 - y.mean())), rel=1e-6)


def test_gradient_vanishes_by_autograd():
    z, rng = _codes(seed=3, L=5)
    y = (rng.random(len(z)) < 0.3).astype(float)
    fit = fit_probes(SparseCodes.from_dense(torch.tensor(z)), y)
    zt, yt = torch.tensor(z), torch.tensor(y)
    w = fit.w.clone().requires_grad_(True)
    b = fit.b.clone().requires_grad_(True)
    eta = w * zt + b
    J = (torch.nn.functional.softplus(eta) - yt[:, None] * eta).mean(0) + 0.5 * 1e-4 * (
        w * zt.std(0, unbiased=False)
    ) ** 2
    J.sum().backward()
    assert w.grad.abs().max() < 1e-8 and b.grad.abs().max() < 1e-8


def test_planted_latent_is_the_probe():
    z, rng = _codes(seed=1, n=4000, L=30)
    y = (z[:, 17] > 0.4).astype(np.int8)
    labels = np.stack([y, (rng.random(len(z)) < 0.2).astype(np.int8), np.zeros(len(z), np.int8)], axis=1)
    labels[::7, 0] = -1  # unlabelled rows are left out
    groups = np.arange(len(z)) // 40
    rep = run_probes(SparseCodes.from_dense(torch.tensor(z)), labels, ["planted", "noise", "constant"], groups)
    planted, noise, constant = rep.tasks
    assert planted.latent == 17 and planted.test_auroc > 0.99 and planted.test_ce < 0.1 * planted.baseline_ce
    assert noise.test_ce > 0.9 * noise.baseline_ce  # nothing to find: no better than the base rate
    assert constant.skipped == "one class in the train rows" and constant.latent is None
    assert rep.probe_loss == pytest.approx(np.mean([planted.test_ce, noise.test_ce]))
    assert planted.n_train + planted.n_test == int((labels[:, 0] >= 0).sum())
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["n_tasks"] == 2 and "held-out CE" in probe_section(rep).markdown


def test_auroc_with_ties():
    assert auroc(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])) == pytest.approx((0.5 + 1 + 1) / 3)
    assert auroc(np.array([1.0, 2.0]), np.array([1, 1])) is None


# ---- text tasks -----------------------------------------------------------------------------------

PIECES = ["<s>", " The", " Lord", " said", ",", ' "', "Go", " and", " run", "ning", " (", "see", " 3", ":", "16", ")", ".", '"',
          "\n", "Verse", " 4", " the", " the", " said", ",", " not", " thee", " thy", " LORD", " is"]  # fmt: skip


def _labels(pieces=PIECES):
    text = TokenText(lambda i: pieces[i])
    tokens = np.arange(len(pieces))[None]
    tokens = np.where(np.array(pieces)[None] == " the", 21, tokens)  # both " the" tokens share one id
    tokens = np.where(np.array(pieces)[None] == " said", 3, tokens)
    tokens = np.where(np.array(pieces)[None] == ",", 4, tokens)
    return {k: np.flatnonzero(v[0]).tolist() for k, v in window_task_labels(tokens, text).items()}


def test_text_tasks_on_known_strings():
    lab = _labels()
    assert len(TASKS) >= 20 and len(set(TASK_NAMES)) == len(TASKS) and all(t.description for t in TASKS)
    assert lab["digit"] == [12, 14, 20]
    assert lab["verse_reference"] == [12, 13, 14, 19, 20]
    assert lab["capitalized_word"] == [1, 2, 6, 19, 28] and lab["all_caps"] == [28]
    assert lab["word_continuation"] == [9] and lab["ing_ending"] == [9]
    assert lab["punctuation"] == [4, 5, 10, 13, 15, 16, 17, 24]
    assert lab["sentence_end"] == [16] and lab["comma"] == [4, 24] and lab["colon_semicolon"] == [13]
    assert lab["newline"] == [18] and lab["line_start"] == [19] and lab["sentence_start"] == [19]
    assert lab["inside_quotes"] == list(range(6, 18)) and lab["inside_parentheses"] == [11, 12, 13, 14, 15]
    assert lab["determiner"] == [1, 21, 22] and lab["conjunction"] == [7] and lab["negation"] == [25]
    assert lab["archaic_form"] == [26, 27] and lab["divine_name"] == [2, 28] and lab["be_verb"] == [29]
    assert lab["repeated_token"] == [22, 23, 24] and lab["induction_bigram"] == [24]
    # " run" is not a complete word ("ning" continues it), so no word-list task may label it.
    from saelab.features.text_tasks import _WORDS

    assert all(8 not in lab[k] for k in (*_WORDS, "divine_name", "ing_ending"))


def test_every_task_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "guide" / "features.md").read_text()
    missing = [n for n in TASK_NAMES if f"`{n}`" not in doc]
    assert not missing, missing


# ---- the command ----------------------------------------------------------------------------------


def test_probe1d_command_on_a_task_file(tmp_path, capsys):
    z, rng = _codes(seed=2, n=1500, L=16)
    x = rng.standard_normal((1500, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    sae_dir = sae_folder(tmp_path / "sae", d_in=8, n_latents=16, method="relu")
    import saelab

    codes = saelab.load(sae_dir).encode(torch.from_numpy(x)).detach().numpy()
    labels = np.stack([codes[:, 5] > np.quantile(codes[:, 5], 0.7), rng.random(1500) < 0.5], axis=1).astype(np.int8)
    np.savez(tmp_path / "tasks.npz", labels=labels, names=np.array(["planted", "coin"]))
    argv = [
        "probe1d",
        "--sae",
        sae_dir,
        "--tasks",
        str(tmp_path / "tasks.npz"),
        "--activations",
        str(tmp_path / "x.npy"),
        "--json",
    ]
    assert run_cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_tasks"] == 2 and out["tasks"][0]["latent"] == 5 and out["tasks"][0]["test_auroc"] > 0.99
    np.savez(tmp_path / "bad.npz", labels=labels[:10])
    with pytest.raises(DataError, match="do not fit 1500 activation rows"):
        run_cli(argv[:4] + [str(tmp_path / "bad.npz")] + argv[5:])
    with pytest.raises(ConfigError, match="tasks='nope'"):
        run_cli(["probe1d", "--sae", sae_dir, "--tasks", "nope"])


def test_probe1d_othello(tmp_path, capsys):
    from saelab.sources.othello.harvest import HarvestConfig
    from saelab.sources.othello.score import findable_mask

    source = {
        "source": "othello",
        "model": "default",
        "layer": 3,
        "trim_start": 5,
        "trim_end": 5,
        "games": 10,
        "seed": 0,
    }
    sae_dir = sae_folder(tmp_path / "sae", d_in=128, n_latents=24, method="topk", k=4, source=source)
    assert HarvestConfig().layer == 3
    assert run_cli(["probe1d", "--sae", sae_dir, "--tasks", "othello", "--games", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tasks"]) == int(np.asarray(findable_mask(3)).sum())
    assert out["tasks"][0]["task"].count(":") == 1 and out["probe_loss"] is not None
    assert 0.0 < out["mean_auroc"] < 1.0


def _plain_fit(codes: SparseCodes, y, l2=1e-4, max_iter=50, tol=1e-9):
    """The previous fit (every latent, every non-zero, every step; Armijo on J for all latents at once): the reference."""
    yt = torch.as_tensor(y, dtype=torch.float64)
    N, L, c, v = codes.n_rows, codes.n_latents, codes.cols, codes.vals
    yv = yt[codes.rows]
    n0 = N - codes._sum(torch.ones_like(v))
    pos0 = float(yt.sum()) - codes._sum(yv)
    lam = l2 * codes.spread() ** 2
    w, b = (
        torch.zeros(L, dtype=torch.float64),
        torch.full((L,), float(np.log(float(yt.mean()) / (1 - float(yt.mean())))), dtype=torch.float64),
    )
    sp = torch.nn.functional.softplus

    def J(w, b):
        eta = w[c] * v + b[c]
        return (codes._sum(sp(eta) - yv * eta) + n0 * sp(b) - pos0 * b) / N + 0.5 * lam * w**2

    f = J(w, b)
    for _ in range(max_iter):
        p = torch.sigmoid(w[c] * v + b[c])
        r, s, p0 = p - yv, p * (1 - p), torch.sigmoid(b)
        gw, gb = codes._sum(r * v) / N + lam * w, (codes._sum(r) + n0 * p0 - pos0) / N
        hww, hwb, hbb = codes._sum(s * v * v) / N + lam, codes._sum(s * v) / N, (codes._sum(s) + n0 * p0 * (1 - p0)) / N
        det = hww * hbb - hwb**2
        full = det > 1e-12 * hww * hbb
        sd = torch.where(full, det, torch.ones_like(det))
        dw = torch.where(full, (hbb * gw - hwb * gb) / sd, torch.zeros_like(w))
        db = torch.where(full, (hww * gb - hwb * gw) / sd, gb / hbb.clamp_min(1e-300))
        slope, t, todo = gw * dw + gb * db, torch.ones(L, dtype=torch.float64), torch.ones(L, dtype=torch.bool)
        nw, nb, nf = w.clone(), b.clone(), f.clone()
        for _ in range(30):
            cf = J(w - t * dw, b - t * db)
            ok = todo & (cf <= f - 1e-4 * t * slope)
            nw[ok], nb[ok], nf[ok] = (w - t * dw)[ok], (b - t * db)[ok], cf[ok]
            todo &= ~ok
            if not todo.any():
                break
            t = torch.where(todo, t / 2, t)
        gain = (f - nf).max().item()
        w, b, f = nw, nb, nf
        if gain <= tol:
            break
    return w, b, f


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_fit_agrees_with_the_plain_fit(seed):
    """The O(moving non-zeros) fit reaches the plain fit's optimum: J within 1e-10, w and b within 1e-5 relative."""
    z, rng = _codes(seed=seed, n=3000, L=40, p=0.1)
    z[:, 7] = 0.0  # never fires
    z[:, 11] = np.where(z[:, 11] > 0, 2.0, 0.0)  # one value: a bias-like latent
    y_sep = (z[:, 3] > 0).astype(float)  # separable by latent 3: w runs until the ridge stops it
    y_noisy = (rng.random(len(z)) < 1 / (1 + np.exp(-(0.8 * z[:, 5] - 1.0)))).astype(float)
    keep = rng.random(len(z)) < 0.8  # a row subset, as run_probes fits (order by latent must survive it)
    codes = SparseCodes.from_dense(torch.tensor(z)).subset(keep)
    for y in (y_sep[keep], y_noisy[keep]):
        fast = fit_probes(codes, y)
        w, b, f = _plain_fit(codes, y)
        assert np.allclose(fast.objective.numpy(), f.numpy(), rtol=0, atol=1e-10)
        assert np.allclose(fast.w.numpy(), w.numpy(), rtol=1e-5, atol=1e-7)
        assert np.allclose(fast.b.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
        assert int(torch.argmin(fast.ce)) == int(torch.argmin(f - 0.5 * 1e-4 * codes.spread() ** 2 * w**2))
