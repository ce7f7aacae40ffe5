"""saelab: train, compare and evaluate sparse autoencoders on transformer activations."""

from saelab.api import train
from saelab.evals.evaluate import evaluate
from saelab.formats.folder import load_sae
from saelab.sources import registry as _sources  # noqa: F401  registers the sources (they read older records' hooks)
from saelab.version import __version__


def load(path, device="cpu"):
    """Load an SAE folder (saelab's, SAELens's or sparsify's; or hf://ORG/REPO[/SUBFOLDER]) as a torch module in eval mode."""
    if str(path).startswith("hf://"):
        from saelab.formats.hub import download  # the Hub client is imported only for hf:// addresses

        path = download(str(path))
    return load_sae(path, device=device)


__all__ = ["load", "train", "evaluate", "__version__"]
