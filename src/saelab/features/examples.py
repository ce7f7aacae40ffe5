"""Top-activating examples of latents: contexts, quantile samples, activation histograms, firing density, direct logit effect.

A latent *fires* on a row when its activation is > 0. One pass over the rows keeps, per chosen
latent, the exact top activations, a uniform random sample of its non-zero activations (for
the quantile samples: the sample is sorted and cut into equal-count bins), an exact histogram of
its non-zero activations in log2 bins, and its firing count. Contexts are read back from the
TokenGrid (no model run), and every token of a shown context carries the latent's activation
there, so a page can shade it. The direct logit effect of a latent is its unit decoder direction
d read through the model's unembedding: W_U (gamma * d), with gamma the final norm's elementwise
weight (the norm's division by the residual's scale is left out, as is usual for this readout).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from saelab.data.token_grid import UNKNOWN
from saelab.errors import ConfigError
from saelab.features.data import FeatureData, codes_of_rows, iter_codes
from saelab.features.logit_effect import decoder_directions, direct_logit_effect

HIST_PER_OCTAVE = 4
HIST_LOW = -24  # log2 of the lowest bin edge; smaller non-zero activations fall into the first bin
HIST_HIGH = 16  # log2 of the highest bin edge; larger ones fall into the last bin
N_HIST = (HIST_HIGH - HIST_LOW) * HIST_PER_OCTAVE
SELECTIONS = ("list", "top-fired", "random")


@dataclass(frozen=True)
class ExamplesConfig:
    """How many examples of each kind, how much context, how many rows to scan."""

    n_top: int = 20
    n_quantiles: int = 4  # equal-count bins of the non-zero activations
    per_quantile: int = 3
    before: int = 12  # context tokens shown before the activating one
    after: int = 3
    sample_size: int = 256  # random non-zero activations kept per latent for the quantile bins
    max_rows: int | None = None  # scan only the first rows (None: all)
    batch_size: int = 4096
    seed: int = 0
    n_logits: int = 10  # promoted / suppressed tokens listed
    board_rows: int = 100_000  # OthelloGPT: rows used for the per-latent board AUROC

    def validate(self) -> "ExamplesConfig":
        """Raise ConfigError naming the first bad field."""
        for name in ("n_top", "n_quantiles", "per_quantile", "sample_size", "batch_size", "n_logits", "board_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "must be an integer ≥ 1")
        for name in ("before", "after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(name, v, "must be an integer ≥ 0")
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise ConfigError("max_rows", self.max_rows, "must be an integer ≥ 1 or None")
        return self


def _r(x: float) -> float:
    """Four significant digits: the page shows no more, and the JSON stays small."""
    return float(f"{x:.4g}")


@dataclass(frozen=True)
class Context:
    """One example: the tokens around a cached row and the latent's activation on each (0 where unknown)."""

    row: int
    window: int
    position: int
    activation: float
    tokens: tuple[int, ...]
    acts: tuple[float, ...]
    focus: int  # index of the example's token in `tokens`

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "row": self.row,
            "window": self.window,
            "position": self.position,
            "activation": _r(self.activation),
            "tokens": list(self.tokens),
            "acts": [_r(a) for a in self.acts],
            "focus": self.focus,
        }


@dataclass(frozen=True)
class QuantileSample:
    """Examples from one equal-count bin of a latent's non-zero activations."""

    q_lo: float
    q_hi: float
    lo: float  # activation range of the bin (in the random sample)
    hi: float
    contexts: tuple[Context, ...]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "q_lo": self.q_lo,
            "q_hi": self.q_hi,
            "lo": _r(self.lo),
            "hi": _r(self.hi),
            "contexts": [c.to_dict() for c in self.contexts],
        }


@dataclass(frozen=True)
class LatentExamples:
    """Everything shown for one latent."""

    latent: int
    count: int  # rows where it fires
    density: float  # count / rows scanned
    max: float
    mean: float  # mean non-zero activation (0 when it never fires)
    top: tuple[Context, ...]
    quantiles: tuple[QuantileSample, ...]
    hist_edges: tuple[float, ...]  # log2-spaced edges of the non-zero activations' histogram
    hist_counts: tuple[int, ...]
    promoted: tuple[tuple[int, float], ...] = ()  # (token id, direct logit effect), largest first
    suppressed: tuple[tuple[int, float], ...] = ()  # most negative first
    board_auroc: tuple[tuple[float | None, ...], ...] | None = None  # OthelloGPT: [64][3] AUROC per (square, state)

    def to_dict(self) -> dict:
        """JSON-ready dict (no NaN)."""
        return {
            "latent": self.latent, "count": self.count, "density": self.density, "max": _r(self.max), "mean": _r(self.mean),
            "top": [c.to_dict() for c in self.top], "quantiles": [q.to_dict() for q in self.quantiles],
            "histogram": {"edges": [_r(e) for e in self.hist_edges], "counts": list(self.hist_counts)},
            "promoted": [[t, _r(v)] for t, v in self.promoted], "suppressed": [[t, _r(v)] for t, v in self.suppressed],
            "board_auroc": None if self.board_auroc is None else [list(r) for r in self.board_auroc],
        }  # fmt: skip


@dataclass
class ExamplesResult:
    """The examples of every chosen latent, the token strings they use and where they came from."""

    source: dict
    rows_scanned: int
    selection: str
    latents: list[LatentExamples]
    tokens: dict[str, str]  # token id (as a string) -> display text
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict; the format name lets a reader check what it holds."""
        return {
            "format": "saelab-latent-examples/1",
            "source": self.source,
            "rows_scanned": self.rows_scanned,
            "selection": self.selection,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "tokens": self.tokens,
            "latents": [l.to_dict() for l in self.latents],
        }


# ---- choosing latents -----------------------------------------------------------------------


@torch.no_grad()
def firing_counts(sae, data: FeatureData, rows: tuple[int, int], batch_size: int = 4096) -> np.ndarray:
    """int64 [n_latents]: on how many of the rows each latent fires."""
    counts = torch.zeros(sae.cfg.n_latents, dtype=torch.long)
    for _, z in iter_codes(sae, data.store, rows[0], rows[1], batch_size):
        counts += (z > 0).sum(0)
    return counts.numpy()


def select_latents(how: str, n_latents: int, value, counts: np.ndarray | None = None, seed: int = 0) -> list[int]:
    """The latents to show: an explicit list, the N most often firing, or N random latents that fire at least once."""
    if how == "list":
        latents = [int(v) for v in value]
        bad = [l for l in latents if not 0 <= l < n_latents]
        if bad or not latents:
            raise ConfigError("latents", bad or latents, f"must be latent indices in 0..{n_latents - 1}")
        return list(dict.fromkeys(latents))
    if how not in SELECTIONS:
        raise ConfigError("selection", how, f"must be one of {', '.join(SELECTIONS)}")
    n = int(value)
    if n < 1:
        raise ConfigError(how, n, "must be ≥ 1")
    assert counts is not None
    if how == "top-fired":
        order = np.argsort(-counts, kind="stable")
        return [int(l) for l in order[:n] if counts[l] > 0]
    alive = np.flatnonzero(counts > 0)
    pick = np.random.default_rng(seed).permutation(alive)[:n]
    return sorted(int(l) for l in pick)


# ---- one pass over the rows -------------------------------------------------------------------


@dataclass
class LatentScan:
    """Per chosen latent: exact top activations, a random sample of non-zero ones, a log2 histogram and counts."""

    latents: list[int]
    top_vals: torch.Tensor  # [L, n_top], -inf where fewer
    top_rows: torch.Tensor
    sample_vals: torch.Tensor  # [L, S]; sample_keys inf where fewer
    sample_rows: torch.Tensor
    sample_keys: torch.Tensor
    hist: torch.Tensor  # [L, N_HIST]
    count: torch.Tensor  # [L]
    total: torch.Tensor  # [L] sum of activations
    rows: int = 0


@torch.no_grad()
def scan_latents(
    sae, data: FeatureData, latents: Sequence[int], rows: tuple[int, int], cfg: ExamplesConfig
) -> LatentScan:
    """One pass over rows lo..hi-1 collecting everything the examples need (no contexts yet)."""
    L = len(latents)
    cols = torch.as_tensor(list(latents), dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    s = LatentScan(
        list(latents),
        torch.full((L, cfg.n_top), -math.inf), torch.full((L, cfg.n_top), -1, dtype=torch.long),
        torch.zeros(L, cfg.sample_size), torch.full((L, cfg.sample_size), -1, dtype=torch.long),
        torch.full((L, cfg.sample_size), math.inf),
        torch.zeros(L, N_HIST, dtype=torch.long), torch.zeros(L, dtype=torch.long), torch.zeros(L, dtype=torch.float64),
    )  # fmt: skip
    for start, z in iter_codes(sae, data.store, rows[0], rows[1], cfg.batch_size):
        zs = z[:, cols].T.contiguous()  # [L, b]
        b = zs.shape[1]
        row_ids = torch.arange(start, start + b).expand(L, b)
        fires = zs > 0
        s.count += fires.sum(1)
        s.total += zs.clamp_min(0).sum(1, dtype=torch.float64)
        s.rows += b
        # Top activations: merge this batch's best with the running best.
        k = min(cfg.n_top, b)
        v, i = zs.topk(k, dim=1)
        v, i = torch.cat([s.top_vals, v], 1), torch.cat([s.top_rows, torch.gather(row_ids, 1, i)], 1)
        best = v.topk(cfg.n_top, dim=1).indices
        s.top_vals, s.top_rows = torch.gather(v, 1, best), torch.gather(i, 1, best)
        # Uniform sample of non-zero activations: keep the smallest random keys (inf for zeros).
        keys = torch.where(fires, torch.rand(L, b, generator=gen), torch.full((L, b), math.inf))
        kk = min(cfg.sample_size, b)
        kv, ki = keys.topk(kk, dim=1, largest=False)
        keys = torch.cat([s.sample_keys, kv], 1)
        vals = torch.cat([s.sample_vals, torch.gather(zs, 1, ki)], 1)
        rws = torch.cat([s.sample_rows, torch.gather(row_ids, 1, ki)], 1)
        keep = keys.topk(cfg.sample_size, dim=1, largest=False).indices
        s.sample_keys, s.sample_vals, s.sample_rows = (torch.gather(t, 1, keep) for t in (keys, vals, rws))
        # Exact histogram of the non-zero activations in log2 bins.
        lat, pos = fires.nonzero(as_tuple=True)
        if lat.numel():
            bins = (torch.log2(zs[lat, pos]) - HIST_LOW) * HIST_PER_OCTAVE
            bins = bins.floor().long().clamp(0, N_HIST - 1)
            s.hist += torch.bincount(lat * N_HIST + bins, minlength=L * N_HIST).view(L, N_HIST)
    return s


# ---- direct logit effect ----------------------------------------------------------------------


def _contexts(
    data: FeatureData, sae, latents: Sequence[int], picks: list[list[tuple[int, float]]], cfg: ExamplesConfig
) -> list[list[Context]]:
    """Contexts of the picked (row, activation) pairs of each latent, with the latent's activation on every shown token."""
    spans = [[data.grid.context_of(r, cfg.before, cfg.after) for r, _ in pl] for pl in picks]
    out: list[list[Context]] = [[] for _ in latents]
    chunk = 64  # latents per encoding pass: bounds the [rows, latents] code block
    for c0 in range(0, len(latents), chunk):
        lat = list(latents[c0 : c0 + chunk])
        rows = sorted({r for sp in spans[c0 : c0 + chunk] for _, rs, _ in sp for r in rs if r >= 0})
        where = {r: i for i, r in enumerate(rows)}
        codes = codes_of_rows(sae, data.store, np.array(rows, dtype=np.int64), lat, cfg.batch_size) if rows else None
        for j in range(len(lat)):
            for (row, act), (toks, rs, focus) in zip(picks[c0 + j], spans[c0 + j]):
                acts = tuple(float(codes[where[r], j]) if r >= 0 else 0.0 for r in rs)
                out[c0 + j].append(Context(int(row), int(data.grid.first_window + data.grid.row_window[row]),
                                           int(data.grid.row_position[row]), float(act), tuple(toks), acts, focus))  # fmt: skip
    return out


def _quantile_picks(
    vals: np.ndarray, rows: np.ndarray, cfg: ExamplesConfig
) -> list[tuple[float, float, float, float, list[tuple[int, float]]]]:
    """Equal-count bins of the sampled non-zero activations, `per_quantile` evenly spaced picks in each."""
    order = np.argsort(vals, kind="stable")
    vals, rows = vals[order], rows[order]
    n = len(vals)
    out = []
    for q in range(cfg.n_quantiles):
        lo, hi = (q * n) // cfg.n_quantiles, ((q + 1) * n) // cfg.n_quantiles
        if hi <= lo:
            continue
        idx = np.unique(np.linspace(lo, hi - 1, min(cfg.per_quantile, hi - lo)).round().astype(int))
        out.append((q / cfg.n_quantiles, (q + 1) / cfg.n_quantiles, float(vals[lo]), float(vals[hi - 1]),
                    [(int(rows[i]), float(vals[i])) for i in idx]))  # fmt: skip
    return out


def build_examples(
    sae,
    data: FeatureData,
    latents: Sequence[int],
    cfg: ExamplesConfig = ExamplesConfig(),
    *,
    unembed: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    selection: str = "list",
    source: dict | None = None,
    board_auroc: np.ndarray | None = None,
    output_to_token: np.ndarray | None = None,
) -> ExamplesResult:
    """Examples of the latents from the data's rows; `unembed` = (W_U, gamma) adds the direct logit effect.

    `board_auroc` [L, 192] (OthelloGPT) adds each latent's AUROC per (square, state);
    `output_to_token` maps output-vocabulary ids to the ids the token text knows (OthelloGPT: squares).
    """
    cfg.validate()
    t0 = time.perf_counter()
    hi = data.store.n_rows if cfg.max_rows is None else min(cfg.max_rows, data.store.n_rows)
    scan = scan_latents(sae, data, latents, (0, hi), cfg)
    top_picks, q_picks = [], []
    for j in range(len(latents)):
        ok = scan.top_vals[j] > 0
        top_picks.append([(int(r), float(v)) for r, v in zip(scan.top_rows[j][ok], scan.top_vals[j][ok])])
        have = torch.isfinite(scan.sample_keys[j])
        q_picks.append(_quantile_picks(scan.sample_vals[j][have].numpy(), scan.sample_rows[j][have].numpy(), cfg))
    flat_q = [[p for _, _, _, _, ps in qs for p in ps] for qs in q_picks]
    ctx = _contexts(data, sae, latents, [t + q for t, q in zip(top_picks, flat_q)], cfg)
    effects = (
        direct_logit_effect(unembed[0], unembed[1], decoder_directions(sae, latents), cfg.n_logits) if unembed else None
    )
    if effects is not None and output_to_token is not None:
        effects = [tuple([(int(output_to_token[t]), v) for t, v in side] for side in e) for e in effects]
    results, used = [], set()
    for j, latent in enumerate(latents):
        contexts = ctx[j]
        top, rest = contexts[: len(top_picks[j])], contexts[len(top_picks[j]) :]
        quantiles = []
        for q_lo, q_hi, lo, hi_v, ps in q_picks[j]:
            quantiles.append(QuantileSample(q_lo, q_hi, lo, hi_v, tuple(rest[: len(ps)])))
            rest = rest[len(ps) :]
        counts = scan.hist[j].numpy()
        nz = np.flatnonzero(counts)
        a, b = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        edges = tuple(2.0 ** (HIST_LOW + i / HIST_PER_OCTAVE) for i in range(a, b + 1)) if b > a else ()
        count = int(scan.count[j])
        promoted, suppressed = effects[j] if effects else ((), ())
        board = None
        if board_auroc is not None:
            grid = np.asarray(board_auroc[j], dtype=np.float64).reshape(64, 3)
            board = tuple(tuple(None if not np.isfinite(v) else round(float(v), 4) for v in sq) for sq in grid)
        for c in contexts:
            used.update(c.tokens)
        used.update(t for t, _ in (*promoted, *suppressed))
        results.append(LatentExamples(
            latent=int(latent), count=count, density=count / max(scan.rows, 1),
            max=max(float(scan.top_vals[j][0]), 0.0) if count else 0.0,
            mean=float(scan.total[j]) / count if count else 0.0,
            top=tuple(top), quantiles=tuple(quantiles), hist_edges=edges, hist_counts=tuple(int(c) for c in counts[a:b]),
            promoted=tuple(promoted), suppressed=tuple(suppressed), board_auroc=board,
        ))  # fmt: skip
    used.discard(UNKNOWN)
    text = data.text()
    notes = [] if unembed else ["no direct logit effect (no model unembedding given)"]
    src = {"activations": data.path, "kind": data.kind, "model": data.model, **(source or {})}
    return ExamplesResult(src, scan.rows, selection, results, text.table(used), time.perf_counter() - t0, notes)


def examples_section(result: ExamplesResult, max_latents: int = 20, id: str = "latent-examples"):
    """A report Section: one row per latent with its density, top tokens and promoted tokens."""
    from saelab.report.section import Note, Paragraph, Section
    from saelab.report.tables import make_table

    def top_tokens(l: LatentExamples) -> str:
        seen: list[str] = []
        for c in l.top:
            t = result.tokens.get(str(c.tokens[c.focus]), "?")
            if t not in seen:
                seen.append(t)
        return " · ".join(repr(t)[1:-1] for t in seen[:6])

    rows = [[str(l.latent), f"{l.density:.2e}", f"{l.max:.3g}", top_tokens(l),
             " · ".join(repr(result.tokens.get(str(t), "?"))[1:-1] for t, _ in l.promoted[:5])] for l in result.latents[:max_latents]]  # fmt: skip
    blocks = [
        Paragraph(f"{len(result.latents)} latents ({result.selection}) over {result.rows_scanned} rows of "
                  f"{result.source.get('activations')}; the tokens each fires most on and those its decoder direction promotes."),
        make_table(["latent", "density", "max", "top-activating tokens", "promotes"], rows, numeric=[True, True, True, False, False]),
    ]  # fmt: skip
    if len(result.latents) > max_latents:
        blocks.append(Note(f"{len(result.latents) - max_latents} more latents are in the dashboard"))
    return Section.from_blocks(id, "Latent examples", blocks)
