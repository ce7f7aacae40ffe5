"""How much each reproduction trains: `quick` (a smoke version, ≤ 15 minutes on 2 cores) and `full`
(the OthelloGPT report's data budget: 100,000 games, 4 epochs, Adam at lr 1e-3; hours, resumable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saelab.errors import ConfigError
from saelab.util import distributed
from saelab.util.atomic import atomic_write_json
from saelab.util.json_files import read_json_object

BUDGETS = ("quick", "full")
DEFAULT_LAYER = 3  # the report trained after layer 3 (of its 8); ours has 4, layer 3 finds 180/188 pairs

# Penalties whose α the target-L0 controller adapts start from its calibrated α (none is set here):
# the penalty term starts as a fixed share of the first batch's loss, whatever the dictionary size.
# Fixed pilot starts (L1 α 1.0, measured at 256 latents) were used until 2026-12-01; at 512 latents
# that start drove ReLU+L1 past its target (L0 228 → 14 in 100 steps, ending at 10 for a target of
# 32, seeds 0/1) where the calibrated start ended at 33.4 / 31.9 (400 × 512, OthelloGPT layer 3).
# Claims whose side missed its target say so instead of comparing (measures.check_target_reached).


@dataclass(frozen=True)
class Budget:
    """Sizes shared by every paper's sweeps at one budget."""

    name: str
    train_games: int  # OthelloGPT games harvested for training (after layer `layer`)
    eval_games: int  # held-out games for the board-state score
    n_latents: int  # dictionary size of the method comparisons
    target_l0: int  # the matched L0 of the method comparisons
    steps: int | None  # training steps (None: `epochs` passes)
    epochs: float | None
    batch_size: int
    seeds: int  # seeds per configuration (≥ 2 for an interval over seeds)
    sizes: tuple[int, ...]  # dictionary sizes of the scaling fits
    n_boot: int  # bootstrap replicates of the board-state intervals
    layer: int = (
        DEFAULT_LAYER  # `saelab reproduce --layer` changes it (layers 1–2 find the most pairs by single latents)
    )
    lr: float = 1e-3
    lm_tokens: int = 40_000  # rows harvested from --model when it names a model, not a cache
    lm_latents: int = 1024  # dictionary size of the --model sweeps
    lm_steps: int = 150
    screen_fraction: float = 1.0  # the search's screen trains each candidate this share of the training length
    finalists: int = 2  # candidates per method that the search scores on the board state
    search_levels: tuple[float, ...] = (1.0, 2.0)  # candidate sparsities, as multiples of target_l0
    extra_methods: bool = False  # the search paper also searches methods beyond the report's (BatchTopK, JumpReLU, …)

    def validate(self) -> "Budget":
        """Check the sizes (ConfigError naming the field)."""
        for f in (
            "train_games",
            "eval_games",
            "n_latents",
            "target_l0",
            "batch_size",
            "seeds",
            "n_boot",
            "lm_tokens",
            "lm_latents",
            "lm_steps",
        ):
            if int(getattr(self, f)) < 1:
                raise ConfigError(f, getattr(self, f), "must be ≥ 1")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("steps", self.steps, "give exactly one of steps / epochs")
        if not 0 < float(self.screen_fraction) <= 1:
            raise ConfigError("screen_fraction", self.screen_fraction, "must be in (0, 1]")
        if int(self.finalists) < 1:
            raise ConfigError("finalists", self.finalists, "must be ≥ 1")
        if not self.search_levels or any(not (float(v) > 0) for v in self.search_levels):
            raise ConfigError("search_levels", self.search_levels, "need ≥ 1 positive multiple of target_l0")
        if len(self.sizes) < 3 or sorted(self.sizes) != list(self.sizes):
            raise ConfigError("sizes", self.sizes, "need ≥ 3 increasing dictionary sizes for a power-law fit")
        return self

    def training(self) -> dict:
        """The sweep's shared training keys."""
        length = {"steps": self.steps} if self.steps is not None else {"epochs": self.epochs}
        return {
            **length,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "normalize": "scalar",
            "log_every": 50,
            "eval_fraction": 0.02,
            "seed": list(range(self.seeds)),
        }

    def screen_training(self) -> dict:
        """The search screen's shared training keys: one seed, `screen_fraction` of the training length."""
        length = (
            {"steps": max(1, round(self.steps * self.screen_fraction))}
            if self.steps is not None
            else {"epochs": self.epochs * self.screen_fraction}
        )
        return {**self.training(), **length, "seed": [0]}

    def lm_training(self, cache: Path) -> dict:
        """The shared keys of a sweep on a language-model activation cache (`--model`)."""
        return {
            "activations": str(cache),
            "steps": self.lm_steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "normalize": "scalar",
            "log_every": 50,
            "eval_fraction": 0.02,
            "seed": list(range(self.seeds)),
            "n_latents": self.lm_latents,
        }


QUICK = Budget(
    "quick",
    train_games=1500,
    eval_games=300,
    n_latents=256,
    target_l0=32,
    steps=400,
    epochs=None,
    batch_size=512,
    seeds=3,
    sizes=(64, 128, 256, 512),
    n_boot=100,
).validate()
# finalists=4 at full: every candidate on a method's L0–NMSE front is scored (there are four levels); two,
# the front's two ends, never scored the target L0 itself (2026-12-02, the first full search).
FULL = Budget(
    "full",
    train_games=100_000,
    eval_games=2000,
    n_latents=1024,
    target_l0=32,
    steps=None,
    epochs=4.0,
    batch_size=2048,
    seeds=3,
    sizes=(256, 512, 1024, 2048, 4096),
    n_boot=200,
    lm_tokens=2_000_000,
    lm_latents=4608,
    lm_steps=4000,
    screen_fraction=0.25,
    finalists=4,
    search_levels=(0.5, 1.0, 2.0, 3.0),
    extra_methods=True,
).validate()


def budget(name: str) -> Budget:
    """The Budget called `name` (ConfigError for an unknown one)."""
    if name not in BUDGETS:
        raise ConfigError("budget", name, f"must be one of {', '.join(BUDGETS)}")
    return QUICK if name == "quick" else FULL


def othello_data(b: Budget, out: Path, say=print) -> Path:
    """Harvest the budget's training games from the committed OthelloGPT into `out`, or reuse a finished harvest there."""
    from saelab.sources.othello.harvest import HarvestConfig, harvest, write_harvest

    source = out / "source.json"
    if source.exists():
        recorded = read_json_object(source)  # a bad file is one line naming it, never a traceback
        if recorded.get("games") == b.train_games and recorded.get("layer") == b.layer:
            say(f"reusing {recorded.get('rows', '?')} harvested positions in {out}")
            return out
    say(f"harvesting {b.train_games:,} games from the committed OthelloGPT (layer {b.layer})")
    h = harvest(HarvestConfig(games=b.train_games, layer=b.layer, seed=0))
    write_harvest(h, out)  # source.json is written last: its presence marks a finished harvest
    return out


def lm_data(b: Budget, model: str, text: str, out: Path, say=print) -> Path:
    """`--model`: an activation cache folder is used as it is; a model name or path is harvested (resumably) into `out`."""
    if (Path(model) / "manifest.json").exists():
        return Path(model)
    from saelab.sources.lm.harvest import HarvestConfig, harvest

    manifest = out / "manifest.json"
    if manifest.exists() and read_json_object(manifest).get("complete") is True:
        say(f"reusing the finished activation cache in {out}")
        return out
    if not Path(text).exists():
        raise ConfigError("text", text, "no such text file for harvesting --model (see docs/offline_lm.md, step 2)")
    say(f"harvesting {b.lm_tokens:,} tokens of {model} (3/4 deep) into {out}")
    cfg = HarvestConfig(
        model=model,
        layer=lm_layer(model),
        site="resid_post",
        text=text,
        tokens=b.lm_tokens,
        out=str(out),
        context=64,
        outlier_factor=10.0,
    )
    harvest(cfg, log=say)  # under torchrun each rank harvests its share of the windows
    if distributed.current().is_main:
        atomic_write_json(out / "reproduce.json", {"model": model, "text": text, "tokens": b.lm_tokens})
    return out


def lm_layer(model: str) -> int:
    """The layer 3/4 of the way into the model (the scaling paper's choice; 22 of 30 for SmolLM2)."""
    from saelab.sources.lm.model import LMSpec, load_lm

    n = load_lm(LMSpec(model)).n_layers
    return min(n - 1, int(0.75 * n))
