"""saelab: train, compare and evaluate sparse autoencoders on transformer activations."""

from saelab.evals.evaluate import evaluate
from saelab.folder import load_sae
from saelab.version import __version__


def load(path, device="cpu"):
    """Load a trained SAE folder (cfg.json + sae_weights.safetensors) as a torch module in eval mode."""
    return load_sae(path, device=device)


__all__ = ["load", "evaluate", "__version__"]
