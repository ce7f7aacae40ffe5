"""N2G-style explanations of latents (token n-grams with wildcards, in a trie) and explanation reconstruction.

Building (per latent, from `n_build` of its activating rows in the build rows, sampled at
random among its non-zero activations as in the scaling paper, or its top ones):
  1. Prune: the shortest suffix of the context that ends at the activating token and, run alone
     after the window's first token (BOS), still gives the latent >= keep_frac of its activation.
     Suffixes are tried from 1 to max_n tokens; an example no suffix up to max_n explains is dropped.
  2. Wildcards: each token of that suffix but the last is replaced in turn by a padding token;
     where the latent keeps >= keep_frac of its activation the token does not matter and becomes a
     wildcard. Leading wildcards are dropped (the pattern then starts at its first token that matters).
  3. The patterns go into a trie keyed from the activating token backwards; each pattern stores
     the mean activation of the examples that produced it (its simulated activation).
Using: a token matches when some pattern ends at it; the simulated activation is the largest
stored activation among the patterns that match (0 where none does). Scoring treats the
explanation as a binary predictor of the latent firing (activation > 0) on held-out rows:
precision = P(fires | predicted), recall = P(predicted | fires), F1 their harmonic mean.
Explanation reconstruction splices the SAE's reconstruction with the explained latents'
activations replaced by their simulated ones and reports the LM's CE (see explanation_reconstruction).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from saelab.data.token_grid import UNKNOWN
from saelab.errors import ConfigError
from saelab.features.data import FeatureData, iter_codes

WILDCARD = -2  # a pattern position any token matches (distinct from UNKNOWN, which matches nothing)
SAMPLES = ("random", "top")

# oracle(sequences) -> activations [len(sequences), L] of the L latents being explained at each sequence's last token.
Oracle = Callable[[list[tuple[int, ...]]], np.ndarray]


@dataclass(frozen=True)
class N2GConfig:
    """How explanations are built and scored."""

    n_build: int = 16  # activating examples per latent used to build
    sample: str = "random"  # "random" non-zero activations (the paper) or the "top" ones
    max_n: int = 8  # longest suffix tried
    keep_frac: float = 0.5  # share of the original activation a pruned context must keep
    pad_token: int | None = None  # replacement when testing wildcards (default: tokenizer pad, unk or eos)
    max_build_rows: int | None = 500_000  # rows scanned for building examples
    max_eval_rows: int = 100_000  # held-out rows scored
    seed: int = 0
    batch_size: int = 4096

    def validate(self) -> "N2GConfig":
        """Raise ConfigError naming the first bad field."""
        for name in ("n_build", "max_n", "max_eval_rows", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "must be an integer ≥ 1")
        if self.sample not in SAMPLES:
            raise ConfigError("sample", self.sample, f"must be one of {', '.join(SAMPLES)}")
        if not 0 < self.keep_frac <= 1:
            raise ConfigError("keep_frac", self.keep_frac, "must lie in (0, 1]")
        return self


@dataclass(frozen=True)
class Example:
    """An activating row: the tokens of its window up to and including it (after the lead token) and the activation."""

    tokens: tuple[int, ...]
    activation: float


@dataclass(frozen=True)
class Pattern:
    """Tokens oldest first, the last one activating; WILDCARD where any token matches."""

    tokens: tuple[int, ...]
    activation: float  # mean activation of the examples that gave this pattern
    count: int


class Trie:
    """Patterns keyed from the activating token backwards; a node that ends a pattern holds its activation."""

    def __init__(self, patterns: Sequence[Pattern] = ()):
        self.root: dict = {"children": {}, "value": None}
        self.patterns = list(patterns)
        for p in patterns:
            node = self.root
            for tok in reversed(p.tokens):
                node = node["children"].setdefault(int(tok), {"children": {}, "value": None})
            node["value"] = p.activation if node["value"] is None else max(node["value"], p.activation)

    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """Simulated activation [W, T] of token windows: the largest activation of a pattern ending there (0: none)."""
        tokens = np.asarray(tokens)
        out = np.zeros(tokens.shape, dtype=np.float32)
        shifted: dict[int, np.ndarray] = {}

        def at(depth: int) -> np.ndarray:
            # tokens[:, t - depth] at t, UNKNOWN where t < depth
            if depth not in shifted:
                s = np.full(tokens.shape, UNKNOWN, dtype=tokens.dtype)
                s[:, depth:] = tokens[:, : tokens.shape[1] - depth]
                shifted[depth] = s
            return shifted[depth]

        def walk(node: dict, depth: int, mask: np.ndarray | None) -> None:
            for tok, child in node["children"].items():
                if tok == WILDCARD:
                    m = mask.copy() if mask is not None else np.ones(tokens.shape, dtype=bool)
                    m[:, :depth] = False
                else:
                    m = at(depth) == tok
                    if mask is not None:
                        m &= mask
                if not m.any():
                    continue
                if child["value"] is not None:
                    np.maximum(out, np.where(m, child["value"], 0.0).astype(np.float32), out=out)
                walk(child, depth + 1, m)

        walk(self.root, 0, None)
        return out


def _patterns_from(found: list[tuple[tuple[int, ...], float]]) -> list[Pattern]:
    """Merge identical patterns, keeping the mean activation and the count."""
    groups: dict[tuple[int, ...], list[float]] = {}
    for toks, act in found:
        groups.setdefault(toks, []).append(act)
    return [
        Pattern(t, float(np.mean(a)), len(a)) for t, a in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))
    ]


def build_patterns(
    examples: Sequence[Sequence[Example]], oracle: Oracle, lead: tuple[int, ...], pad: int, cfg: N2GConfig = N2GConfig()
) -> list[list[Pattern]]:
    """Patterns of each latent (examples[j] are latent j's), every latent's model runs batched together."""
    cfg.validate()
    n_lat = len(examples)
    chosen: dict[tuple[int, int], int] = {}  # (latent, example) -> suffix length that keeps the activation
    pending = [(j, e) for j in range(n_lat) for e in range(len(examples[j]))]
    for n in range(1, cfg.max_n + 1):
        todo = [(j, e) for j, e in pending if len(examples[j][e].tokens) >= n]
        if not todo:
            break
        seqs = [lead + examples[j][e].tokens[-n:] for j, e in todo]
        acts = oracle(seqs)
        still = []
        for i, (j, e) in enumerate(todo):
            ex = examples[j][e]
            # The whole context is the original input: it explains its own activation by definition.
            if acts[i, j] >= cfg.keep_frac * ex.activation or n == len(ex.tokens):
                chosen[(j, e)] = n
            else:
                still.append((j, e))
        pending = still
    # Wildcards: a token whose replacement by padding keeps the activation does not matter.
    tests = [(j, e, i) for (j, e), n in chosen.items() for i in range(n - 1)]
    wild: set[tuple[int, int, int]] = set()
    if tests:
        seqs = []
        for j, e, i in tests:
            suffix = list(examples[j][e].tokens[-chosen[(j, e)] :])
            suffix[i] = pad
            seqs.append(lead + tuple(suffix))
        acts = oracle(seqs)
        wild = {t for k, t in enumerate(tests) if acts[k, t[0]] >= cfg.keep_frac * examples[t[0]][t[1]].activation}
    found: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in range(n_lat)]
    for (j, e), n in chosen.items():
        toks = [WILDCARD if (j, e, i) in wild else t for i, t in enumerate(examples[j][e].tokens[-n:])]
        while toks and toks[0] == WILDCARD:
            toks.pop(0)
        found[j].append((tuple(toks), examples[j][e].activation))
    return [_patterns_from(f) for f in found]


@dataclass(frozen=True)
class ExplanationScore:
    """One latent's explanation and how well it predicts the latent firing on held-out rows."""

    latent: int
    patterns: list  # [[token ids (-2 = wildcard)], activation, count]
    patterns_text: list  # the same as strings, '*' for a wildcard
    n_examples: int
    n_explained: int  # examples a suffix up to max_n explained
    predicted: int  # held-out rows the explanation predicts
    fires: int  # held-out rows where the latent fires
    precision: float | None  # None when nothing is predicted
    recall: float | None  # None when the latent never fires there
    f1: float | None


@dataclass(frozen=True)
class ReconstructionCE:
    """Downstream CE with the explained latents' activations replaced by simulated ones, and its references."""

    ce_clean: float
    ce_sae: float  # SAE reconstruction spliced, every latent real
    ce_explained: float  # the explained latents simulated, the others real
    ce_ablated: float  # the explained latents zeroed, the others real
    recovered: (
        float | None
    )  # (ce_ablated - ce_explained) / (ce_ablated - ce_sae): share of their effect the explanations keep
    tokens: int
    windows: int


@dataclass
class ExplainReport:
    """N2G explanations of several latents with their mean precision / recall / F1."""

    source: dict
    latents: list[ExplanationScore]
    mean_precision: float | None
    mean_recall: float | None
    mean_f1: float | None
    reconstruction: ReconstructionCE | None = None
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict (None where undefined)."""
        return {"source": self.source, "mean_precision": self.mean_precision, "mean_recall": self.mean_recall,
                "mean_f1": self.mean_f1, "reconstruction": None if self.reconstruction is None else asdict(self.reconstruction),
                "config": self.config, "seconds": round(self.seconds, 3), "latents": [asdict(l) for l in self.latents]}  # fmt: skip


def score_predictions(predicted: np.ndarray, fires: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(precision, recall, F1) of a boolean prediction against where the latent fires; None where undefined."""
    predicted, fires = np.asarray(predicted, bool), np.asarray(fires, bool)
    tp = int((predicted & fires).sum())
    precision = tp / int(predicted.sum()) if predicted.any() else None
    recall = tp / int(fires.sum()) if fires.any() else None
    if precision is None or recall is None:
        f1 = 0.0 if (precision is None) != (recall is None) else None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def _mean(xs) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


# ---- the LM side -----------------------------------------------------------------------------------


class LMOracle:
    """Runs short token sequences through the LM up to the SAE's site and returns the chosen latents at the last token."""

    def __init__(self, lm, site, sae, latents: Sequence[int], batch_size: int = 256):
        self.lm, self.site, self.sae = lm, site, sae
        self.cols = torch.as_tensor(list(latents), dtype=torch.long)
        self.batch_size = batch_size
        self.sequences_run = 0

    @torch.no_grad()
    def __call__(self, seqs: list[tuple[int, ...]]) -> np.ndarray:
        """Activations [len(seqs), L]; identical sequences run once, sequences of one length share a forward."""
        uniq = list(dict.fromkeys(seqs))
        values: dict[tuple[int, ...], np.ndarray] = {}
        by_len: dict[int, list[tuple[int, ...]]] = {}
        for s in uniq:
            by_len.setdefault(len(s), []).append(s)
        for group in by_len.values():
            for i in range(0, len(group), self.batch_size):
                part = group[i : i + self.batch_size]
                acts = self.lm.activations(torch.tensor(part, dtype=torch.long), self.site)[:, -1]
                z = self.sae.encode(acts.float())[:, self.cols].numpy()
                values.update(zip(part, z))
                self.sequences_run += len(part)
        return np.stack([values[s] for s in seqs]) if seqs else np.zeros((0, len(self.cols)), np.float32)


def default_pad(tokenizer) -> int:
    """The padding token for wildcard tests: the tokenizer's pad, else unk, else eos token."""
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    raise ConfigError("pad_token", None, "the tokenizer has no pad, unk or eos token; pass one")


def collect_examples(
    sae, data: FeatureData, latents: Sequence[int], rows: tuple[int, int], cfg: N2GConfig
) -> list[list[Example]]:
    """Per latent, up to n_build activating rows of the build range (random non-zero or top), as Examples."""
    from saelab.features.examples import ExamplesConfig, scan_latents

    hi = rows[1] if cfg.max_build_rows is None else min(rows[1], rows[0] + cfg.max_build_rows)
    scan = scan_latents(sae, data, latents, (rows[0], hi),
                        ExamplesConfig(n_top=cfg.n_build, sample_size=cfg.n_build, seed=cfg.seed, batch_size=cfg.batch_size))  # fmt: skip
    lead_len = 1 if data.first_token_id is not None else 0
    out = []
    for j in range(len(latents)):
        if cfg.sample == "top":
            picks = [(int(r), float(v)) for r, v in zip(scan.top_rows[j], scan.top_vals[j]) if v > 0]
        else:
            picks = [
                (int(r), float(v))
                for r, v, k in zip(scan.sample_rows[j], scan.sample_vals[j], scan.sample_keys[j])
                if math.isfinite(k)
            ]
        exs = []
        for r, v in picks:
            w, p = int(data.grid.row_window[r]), int(data.grid.row_position[r])
            toks = data.grid.tokens[w, lead_len : p + 1]
            if len(toks) and (toks != UNKNOWN).all():  # a context with a dropped (unknown) token cannot be rerun
                exs.append(Example(tuple(int(t) for t in toks), v))
        out.append(exs)
    return out


def explain_latents(
    sae,
    data: FeatureData,
    latents: Sequence[int],
    oracle: Oracle,
    build_rows: tuple[int, int],
    eval_rows: tuple[int, int],
    cfg: N2GConfig = N2GConfig(),
    pad: int = 0,
) -> tuple[list[Trie], list[ExplanationScore]]:
    """Build each latent's trie from the build rows and score it on the held-out rows."""
    cfg.validate()
    examples = collect_examples(sae, data, latents, build_rows, cfg)
    lead = (int(data.first_token_id),) if data.first_token_id is not None else ()
    patterns = build_patterns(examples, oracle, lead, pad, cfg)
    tries = [Trie(p) for p in patterns]
    lo, hi = eval_rows[0], min(eval_rows[1], eval_rows[0] + cfg.max_eval_rows)
    cols = torch.as_tensor(list(latents), dtype=torch.long)
    fires = np.concatenate([(z[:, cols] > 0).numpy() for _, z in iter_codes(sae, data.store, lo, hi, cfg.batch_size)])
    windows, where = np.unique(data.grid.row_window[lo:hi], return_inverse=True)
    tokens = data.grid.tokens[windows]
    pos = data.grid.row_position[lo:hi]
    text = data.text()
    scores = []
    for j, latent in enumerate(latents):
        pred = tries[j].predict(tokens)[where, pos] > 0
        precision, recall, f1 = score_predictions(pred, fires[:, j])
        pats = patterns[j]
        scores.append(ExplanationScore(
            int(latent), [[list(p.tokens), round(p.activation, 5), p.count] for p in pats],
            ["".join("*" if t == WILDCARD else text([t])[0] for t in p.tokens) for p in pats],
            len(examples[j]), sum(p.count for p in pats), int(pred.sum()), int(fires[:, j].sum()), precision, recall, f1,
        ))  # fmt: skip
    return tries, scores


@torch.no_grad()
def explanation_reconstruction(
    lm,
    site,
    sae,
    windows: torch.Tensor,
    latents: Sequence[int],
    tries: Sequence[Trie],
    outlier_factor: float | None = None,
    batch_size: int = 8,
) -> ReconstructionCE:
    """CE of the LM on token windows [W, T] with the SAE spliced in, the explained latents simulated / zeroed / real.

    Positions spliced and predictions averaged follow saelab.sources.lm.downstream (BOS and outliers
    left clean; predictions of positions 1..T-2).
    """
    from saelab.sources.lm.downstream import replace_at, token_ce
    from saelab.sources.lm.text import keep_mask

    cols = torch.as_tensor(list(latents), dtype=torch.long)
    sums = {"clean": 0.0, "sae": 0.0, "explained": 0.0, "ablated": 0.0}
    count = 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size]
        clean_logits, acts = lm.run_with_activations(ids, site)
        mask = keep_mask(acts, True, outlier_factor)
        x = acts[mask].float()
        x_n, ctx = sae.normalizer.normalize(x)
        z = sae.encode_normalized(x_n)
        sim = torch.from_numpy(np.stack([t.predict(ids.numpy()) for t in tries], axis=-1))[mask.cpu()]
        variants = {"sae": z, "explained": z.clone(), "ablated": z.clone()}
        variants["explained"][:, cols] = sim.to(z.dtype)
        variants["ablated"][:, cols] = 0.0
        sums["clean"] += float(token_ce(clean_logits, ids).sum())
        for name, zz in variants.items():
            x_hat = sae.normalizer.denormalize(sae.decode_normalized(zz), ctx)
            sums[name] += float(token_ce(lm.spliced_logits(ids, site, replace_at(mask, x_hat)), ids).sum())
        count += ids.shape[0] * (ids.shape[1] - 2)
    ce = {k: v / max(count, 1) for k, v in sums.items()}
    gap = ce["ablated"] - ce["sae"]
    return ReconstructionCE(ce["clean"], ce["sae"], ce["explained"], ce["ablated"],
                            (ce["ablated"] - ce["explained"]) / gap if gap != 0 else None, count, int(windows.shape[0]))  # fmt: skip


def complete_windows(data: FeatureData, rows: tuple[int, int], n: int) -> torch.Tensor:
    """Up to n windows [n, T] of the row range whose every token is known (whole windows, for rerunning the LM)."""
    windows = data.grid.windows_of_rows(*rows)
    toks = data.grid.tokens[windows]
    ok = (toks != UNKNOWN).all(1)
    return torch.from_numpy(toks[ok][:n].astype(np.int64))


def explain_report(
    scores: list[ExplanationScore],
    source: dict,
    cfg: N2GConfig,
    reconstruction: ReconstructionCE | None = None,
    seconds: float = 0.0,
) -> ExplainReport:
    """Means over latents: precision over latents whose explanation predicts something, recall over latents that fire."""
    return ExplainReport(source, scores, _mean(s.precision for s in scores), _mean(s.recall for s in scores),
                         _mean(s.f1 for s in scores), reconstruction, asdict(cfg), seconds)  # fmt: skip


def explain_section(report: ExplainReport, max_latents: int = 20, id: str = "n2g"):
    """A report Section: mean precision / recall / F1, explanation reconstruction, and the first latents' patterns."""
    from saelab.report.section import Paragraph, Section
    from saelab.report.tables import make_table

    def f(x):
        return "–" if x is None else f"{x:.3f}"

    blocks = [Paragraph(f"N2G explanations of {len(report.latents)} latents on held-out rows: mean precision {f(report.mean_precision)}, "
                        f"recall {f(report.mean_recall)}, F1 {f(report.mean_f1)}.")]  # fmt: skip
    r = report.reconstruction
    if r is not None:
        blocks.append(Paragraph(f"Explanation reconstruction over {r.tokens} predictions: CE clean {r.ce_clean:.4f}, SAE {r.ce_sae:.4f}, "
                                f"explained latents simulated {r.ce_explained:.4f}, zeroed {r.ce_ablated:.4f} "
                                f"(share of their effect kept: {f(r.recovered)})."))  # fmt: skip
    rows = [[str(s.latent), " | ".join(repr(t)[1:-1] for t in s.patterns_text[:4]), f(s.precision), f(s.recall), f(s.f1)]
            for s in report.latents[:max_latents]]  # fmt: skip
    blocks.append(make_table(["latent", "patterns (* = any token)", "precision", "recall", "F1"], rows,
                             numeric=[True, False, True, True, True]))  # fmt: skip
    return Section.from_blocks(id, "N2G explanations", blocks)
