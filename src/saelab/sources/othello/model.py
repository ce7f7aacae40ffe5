"""OthelloGPT: a small pre-LayerNorm GPT that predicts the next move of an Othello game.

Tokens: 0 is padding; the 60 playable squares (every square except the start squares
27, 28, 35, 36) map in increasing order to tokens 1..60, so square 0 -> 1, ..., 26 -> 27,
29 -> 28, ..., 34 -> 33, 37 -> 34, ..., 63 -> 60. See SQUARE_TO_TOKEN / TOKEN_TO_SQUARE.

The model reads moves 0..58 of a game (context 59) and at position t predicts move t+1.
Residual-stream layers are numbered 0 = token + position embeddings, i = after block i
(1..n_layer); the final LayerNorm and unembedding are not part of any layer.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from saelab.sources.othello.engine import START_SQUARES
from saelab.util.atomic import atomic_save_safetensors, atomic_write_text

PAD_TOKEN = 0
VOCAB_SIZE = 61
CONTEXT = 59
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

PLAYABLE_SQUARES = np.array([s for s in range(64) if s not in START_SQUARES], dtype=np.int64)
SQUARE_TO_TOKEN = np.full(64, -1, dtype=np.int64)
SQUARE_TO_TOKEN[PLAYABLE_SQUARES] = np.arange(1, 61)
TOKEN_TO_SQUARE = np.concatenate([[-1], PLAYABLE_SQUARES]).astype(np.int64)


def games_to_tokens(games: np.ndarray) -> torch.Tensor:
    """Map int game records [N, T] (squares, -1 = no move) to token ids [N, T] (0 = padding)."""
    g = np.asarray(games).astype(np.int64)
    tok = np.where(g >= 0, SQUARE_TO_TOKEN[np.clip(g, 0, 63)], PAD_TOKEN)
    if (tok < 0).any():
        raise ValueError("games: contains a start square (27, 28, 35 or 36) as a move")
    return torch.from_numpy(tok)


@dataclass
class OthelloGPTConfig:
    """Architecture of OthelloGPT; serialised next to the weights as config.json."""

    n_layer: int = 6
    d_model: int = 256
    n_head: int = 8
    d_mlp: int = 1024
    vocab_size: int = VOCAB_SIZE
    n_ctx: int = CONTEXT
    ln_eps: float = 1e-5
    note: str = ""

    def validate(self) -> "OthelloGPTConfig":
        """Raise ValueError naming the first field with an impossible value."""
        for name in ("n_layer", "d_model", "n_head", "d_mlp", "vocab_size", "n_ctx"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.d_model % self.n_head:
            raise ValueError(f"n_head={self.n_head}: must divide d_model={self.d_model}")
        return self

    def to_json(self) -> str:
        """Return the config as a JSON string."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "OthelloGPTConfig":
        """Build a config from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"config keys {sorted(extra)}: unknown to OthelloGPTConfig")
        return cls(**d).validate()


class Block(nn.Module):
    """One pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: OthelloGPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.out = nn.Linear(cfg.d_mlp, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to a residual stream [B, T, d_model]."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (z.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class OthelloGPT(nn.Module):
    """Next-move predictor over tokens; see the module docstring for the token and layer maps."""

    def __init__(self, cfg: OthelloGPTConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.apply(self._init)
        # GPT-2 style: shrink residual-writing projections so depth does not blow up the stream.
        for blk in self.blocks:
            for lin in (blk.proj, blk.out):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"tokens.shape={tuple(tokens.shape)}: expected [B, <= {self.cfg.n_ctx}]")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the layer-0 residual stream: token plus position embeddings [B, T, d_model]."""
        self._check(tokens)
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self.tok_emb(tokens) + self.pos_emb(pos)

    def forward(self, tokens: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor:
        """Return logits [B, T, vocab], or the residual after block `stop_at_layer` if given."""
        if stop_at_layer is not None:
            return self.residual_stream(tokens, stop_at_layer)
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.unembed(self.ln_f(x))

    def residual_stream(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the residual stream after block `layer` (0 = embeddings), running no further."""
        if not 0 <= layer <= self.cfg.n_layer:
            raise ValueError(f"layer={layer}: must lie in 0..{self.cfg.n_layer}")
        return self.all_residuals(tokens, up_to=layer)[layer]

    def all_residuals(self, tokens: torch.Tensor, up_to: int | None = None) -> list[torch.Tensor]:
        """Return the residual stream at every layer 0..up_to (default n_layer) in one forward pass."""
        up_to = self.cfg.n_layer if up_to is None else up_to
        if not 0 <= up_to <= self.cfg.n_layer:
            raise ValueError(f"up_to={up_to}: must lie in 0..{self.cfg.n_layer}")
        x = self.embed(tokens)
        out = [x]
        for blk in self.blocks[:up_to]:
            x = blk(x)
            out.append(x)
        return out

    def save(self, directory: str | os.PathLike) -> None:
        """Write model.safetensors and config.json into `directory`, each atomically."""

        d = Path(directory)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save_safetensors(d / WEIGHTS_FILE, state)
        atomic_write_text(d / CONFIG_FILE, self.cfg.to_json() + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu") -> "OthelloGPT":
        """Load a model saved by `save` and put it in eval mode."""
        from safetensors.torch import load_file

        d = Path(directory)
        cfg = OthelloGPTConfig.from_dict(json.loads((d / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(d / WEIGHTS_FILE), device=device))
        return model.to(device).eval()


def load_default_model(device: str = "cpu") -> OthelloGPT:
    """Load the committed OthelloGPT from the package's assets folder."""
    if not (ASSETS_DIR / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{ASSETS_DIR / WEIGHTS_FILE}: committed OthelloGPT is missing")
    return OthelloGPT.load(ASSETS_DIR, device=device)
