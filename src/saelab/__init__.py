"""saelab: train, compare and evaluate sparse autoencoders on transformer activations."""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a trained SAE folder (cfg.json + sae_weights.safetensors) as a torch module."""
    from saelab.io import load_sae

    return load_sae(path, device=device)


__all__ = ["load", "__version__"]
