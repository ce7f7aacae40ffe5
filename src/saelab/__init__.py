"""saelab: train, compare and evaluate sparse autoencoders on transformer activations."""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a trained SAE folder (cfg.json + sae_weights.safetensors) as a torch module."""
    from saelab.io import load_sae

    return load_sae(path, device=device)


def evaluate(sae, activations, true_dictionary=None, rows=None, batch_size: int = 8192):
    """Reconstruction metrics (ReconstructionResult) of an SAE (module or folder) on an activation file or folder."""
    import torch

    from saelab.data.store import ActivationStore
    from saelab.evals.reconstruction import evaluate_store

    if not isinstance(sae, torch.nn.Module):
        sae = load(sae)
    store = ActivationStore(activations)
    store.scan_finite()
    dictionary = None
    if true_dictionary is not None:
        d = ActivationStore(true_dictionary)
        dictionary = torch.from_numpy(d.read_range(0, d.n_rows))
    return evaluate_store(sae, store, rows, batch_size=batch_size, dictionary=dictionary)


__all__ = ["load", "evaluate", "__version__"]
