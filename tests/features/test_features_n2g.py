"""N2G explanations: a planted n-gram feature is recovered exactly, the trie matches by hand, the LM plumbing is consistent."""

import json

import numpy as np
import pytest
import torch
from _features_util import CTX, one_thread, run_cli, sae_folder  # noqa: F401

from saelab.features.n2g import (
    WILDCARD,
    Example,
    N2GConfig,
    Pattern,
    Trie,
    build_patterns,
    explain_report,
    explain_section,
    score_predictions,
)

BOS, THE, CAT, DOG, SAT, PAD = 1, 2, 3, 4, 5, 0
VOCAB = 12  # ids 2..11 are text tokens


def planted(seq) -> np.ndarray:
    """Two latents on a token sequence's last token: 'the cat' -> 2.0, and 'dog * sat' -> 1.0."""
    out = np.zeros(2, np.float32)
    if len(seq) >= 2 and seq[-2] == THE and seq[-1] == CAT:
        out[0] = 2.0
    if len(seq) >= 3 and seq[-3] == DOG and seq[-1] == SAT:
        out[1] = 1.0
    return out


def _windows(n, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(2, VOCAB, size=(n, CTX))
    w[:, 0] = BOS
    return w


def _activations(windows):
    return np.stack([[planted(list(row[1 : t + 1])) for t in range(CTX)] for row in windows])  # [W, T, 2]


def test_planted_ngrams_are_recovered_with_precision_and_recall_one():
    calls = []

    def oracle(seqs):
        calls.append(len(seqs))
        return np.stack([planted(list(s[1:])) for s in seqs])  # drop the lead token, as the LM sees it as BOS

    build = _windows(400, 0)
    acts = _activations(build)
    examples = []
    for j in range(2):
        w, t = np.nonzero(acts[:, :, j] > 0)
        examples.append(
            [
                Example(tuple(int(x) for x in build[wi, 1 : ti + 1]), float(acts[wi, ti, j]))
                for wi, ti in zip(w[:16], t[:16])
            ]
        )
    patterns = build_patterns(examples, oracle, (BOS,), PAD, N2GConfig(max_n=5))
    assert [p.tokens for p in patterns[0]] == [(THE, CAT)] and patterns[0][0].activation == 2.0
    assert [p.tokens for p in patterns[1]] == [(DOG, WILDCARD, SAT)] and patterns[1][0].count == 16
    held = _windows(300, 1)
    truth = _activations(held)
    for j in range(2):
        pred = Trie(patterns[j]).predict(held)
        np.testing.assert_array_equal(pred, truth[:, :, j])  # simulated activations equal the real ones
        p, r, f1 = score_predictions(pred[:, 1:] > 0, truth[:, 1:, j] > 0)
        assert (p, r, f1) == (1.0, 1.0, 1.0)
    assert len(calls) <= 6  # one batched oracle call per suffix length, plus one for the wildcards


def test_examples_no_suffix_explains_are_dropped():
    # The latent needs 4 tokens of context but only suffixes up to 2 are tried.
    ex = [Example((7, 8, 9, 10, 11), 1.0)]
    pats = build_patterns(
        [ex], lambda seqs: np.array([[1.0 if len(s) > 4 else 0.0] for s in seqs]), (BOS,), PAD, N2GConfig(max_n=2)
    )
    assert pats == [[]]
    # A context shorter than max_n is its own explanation.
    pats = build_patterns(
        [[Example((7, 8), 1.0)]], lambda seqs: np.array([[float(s[1:] == (7, 8))] for s in seqs]), (BOS,), PAD
    )
    assert [p.tokens for p in pats[0]] == [(7, 8)]


def test_trie_by_hand():
    trie = Trie(
        [Pattern((5,), 1.0, 1), Pattern((3, 5), 4.0, 2), Pattern((7, WILDCARD, 9), 2.0, 1), Pattern((9,), 0.5, 1)]
    )
    tokens = np.array([[5, 3, 5, 7, 1, 9, 9], [7, 9, 9, 5, -1, 3, 5]])
    expect = np.array([[1.0, 0, 4.0, 0, 0, 2.0, 0.5], [0, 0.5, 2.0, 1.0, 0, 0, 4.0]])
    np.testing.assert_array_equal(trie.predict(tokens), expect)
    assert Trie([]).predict(tokens).sum() == 0


def test_scores_when_undefined():
    assert score_predictions(np.array([0, 0]), np.array([0, 1])) == (None, 0.0, 0.0)
    assert score_predictions(np.array([1, 0]), np.array([0, 0])) == (0.0, None, 0.0)
    assert score_predictions(np.array([0, 0]), np.array([0, 0])) == (None, None, None)
    assert score_predictions(np.array([1, 1, 0]), np.array([1, 0, 1])) == (0.5, 0.5, 0.5)


def test_report_means_skip_undefined():
    from saelab.features.n2g import ExplanationScore

    a = ExplanationScore(0, [], [], 1, 1, 0, 5, None, 0.0, 0.0)
    b = ExplanationScore(1, [[[3], 1.0, 1]], ["x"], 1, 1, 4, 4, 0.5, 0.5, 0.5)
    rep = explain_report([a, b], {}, N2GConfig())
    assert (rep.mean_precision, rep.mean_recall, rep.mean_f1) == (0.5, 0.25, 0.25)
    assert "N2G explanations of 2 latents" in explain_section(rep).markdown
    json.dumps(rep.to_dict(), allow_nan=False)


# ---- the LM side ----------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    from _features_util import harvest_cache, text_file, tiny_model_dir

    root = tmp_path_factory.mktemp("n2g")
    model = tiny_model_dir(root, "gpt2")
    cache = harvest_cache(model, text_file(root, lines=80), root / "cache", tokens=900)
    sae_dir = sae_folder(root / "sae", method="topk", k=4, train_path=cache, eval_rows=(750, 900))
    return root, model, cache, sae_dir


def test_oracle_equals_a_direct_run(lm_setup):
    import saelab
    from saelab.features.n2g import LMOracle
    from saelab.sources.lm import model as hf

    _, model, _, sae_dir = lm_setup
    lm, sae = hf.load_lm(model), saelab.load(sae_dir)
    site = lm.site(1, "resid_post")
    oracle = LMOracle(lm, site, sae, [2, 7])
    seqs = [(1, 5, 6, 7), (1, 9), (1, 5, 6, 7), (1, 4, 4)]
    got = oracle(seqs)
    for s, row in zip(seqs, got):
        z = sae.encode(lm.activations(torch.tensor([s]), site)[0, -1:])[0, [2, 7]]
        np.testing.assert_allclose(row, z.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert oracle.sequences_run == 3  # the repeated sequence ran once


def test_explanation_reconstruction_is_consistent(lm_setup):
    import saelab
    from saelab.features.data import load_feature_data
    from saelab.features.n2g import complete_windows, explanation_reconstruction
    from saelab.sources.lm import model as hf
    from saelab.sources.lm.downstream import evaluate_downstream

    _, model, cache, sae_dir = lm_setup
    lm, sae = hf.load_lm(model), saelab.load(sae_dir)
    site = lm.site(1, "resid_post")
    windows = complete_windows(load_feature_data(cache), (750, 900), 6)
    assert windows.shape == (6, CTX) and (windows[:, 0] == windows[0, 0]).all()
    empty = explanation_reconstruction(lm, site, sae, windows, [0, 1, 2], [Trie([]), Trie([]), Trie([])], batch_size=4)
    assert empty.ce_explained == pytest.approx(empty.ce_ablated, abs=1e-6)  # nothing explained = those latents zeroed
    ref = evaluate_downstream(lm, site, sae, [windows])
    assert empty.ce_sae == pytest.approx(ref.ce_sae, rel=1e-5) and empty.ce_clean == pytest.approx(
        ref.ce_clean, rel=1e-6
    )
    assert empty.tokens == ref.tokens == 6 * (CTX - 2)


def test_explain_command(lm_setup, tmp_path, capsys):
    _, _, cache, sae_dir = lm_setup
    out = tmp_path / "explain.json"
    argv = ["lm", "explain", "--sae", sae_dir, "--activations", cache, "--latents", "0,4,9", "--windows", "3", "--max-n", "4",
            "--out", str(out), "--json"]  # fmt: skip
    assert run_cli(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads(out.read_text())
    assert [l["latent"] for l in rep["latents"]] == [0, 4, 9] and rep["source"]["held_out"] == "the SAE's held-out rows"
    assert rep["source"]["eval_rows"][0] >= 750 and rep["source"]["sequences_run"] > 0
    for l in rep["latents"]:
        assert l["n_examples"] <= 16 and all(len(p[0]) <= 4 for p in l["patterns"])
        assert l["precision"] is None or 0 <= l["precision"] <= 1
        assert l["fires"] == 0 or l["recall"] is not None
    assert rep["reconstruction"]["windows"] == 3 and rep["reconstruction"]["tokens"] == 3 * (CTX - 2)
    with pytest.raises(SystemExit):  # --latents, --top-fired or --random is required
        run_cli(["lm", "explain", "--sae", sae_dir, "--activations", cache])
