"""A latent's direct effect on the logits: its decoder direction through the model's final norm and unembedding."""

from __future__ import annotations

from typing import Sequence

import torch

from saelab.errors import ConfigError

_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
                "model.language_model.norm", "ln_f")  # fmt: skip


def unembedding(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U [V, d], final-norm elementwise weight [d] or None) of a causal LM or OthelloGPT."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else getattr(model, "unembed", None)
    if head is None or not hasattr(head, "weight"):
        raise ConfigError("model", type(model).__name__, "has no output embedding to read latents through")
    gamma = None
    for path in _FINAL_NORMS:
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        weight = getattr(mod, "weight", None) if mod is not None else None
        if isinstance(weight, torch.Tensor) and weight.ndim == 1:
            # Gemma's RMSNorm scales by (1 + weight); every other norm here by weight.
            gamma = weight.detach().float() + (1.0 if "Gemma" in type(mod).__name__ else 0.0)
            break
    return head.weight.detach().float(), gamma


@torch.no_grad()
def direct_logit_effect(
    W_U: torch.Tensor, gamma: torch.Tensor | None, directions: torch.Tensor, n: int
) -> list[tuple[list, list]]:
    """Per direction: ([(token, effect)] of the n largest, [(token, effect)] of the n most negative), unit-norm directions."""
    d = directions.float()
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if gamma is not None:
        d = d * gamma
    out = []
    for i in range(0, d.shape[0], 64):
        eff = d[i : i + 64] @ W_U.T  # [<=64, V]
        k = min(n, eff.shape[1])
        top, bot = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        for j in range(eff.shape[0]):
            out.append(([(int(t), float(v)) for t, v in zip(top.indices[j], top.values[j])],
                        [(int(t), float(v)) for t, v in zip(bot.indices[j], bot.values[j])]))  # fmt: skip
    return out


def decoder_directions(sae, latents: Sequence[int]) -> torch.Tensor:
    """Decoder rows of the latents; a scalar normalization factor only rescales them, so the directions are raw-space ones."""
    return sae.W_dec.detach()[torch.as_tensor(list(latents), dtype=torch.long)].float()


# ---- assembling the examples --------------------------------------------------------------------
