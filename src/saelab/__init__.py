"""saelab: train, compare and evaluate sparse autoencoders on transformer activations."""

from saelab.evals.evaluate import evaluate
from saelab.folder import load_sae
from saelab.version import __version__

# `saelab.train` is the API function, not the submodule of the same name: importing saelab.api
# loads saelab.train first (so `from saelab.train import Trainer` and `import saelab.train` find it
# in sys.modules and leave this attribute alone), and the function is bound after it.
from saelab.api import train  # noqa: E402


def load(path, device="cpu"):
    """Load an SAE folder (saelab's, SAELens's or sparsify's; or hf://ORG/REPO[/SUBFOLDER]) as a torch module in eval mode."""
    if str(path).startswith("hf://"):
        from saelab.hub import download  # the Hub client is imported only for hf:// addresses

        path = download(str(path))
    return load_sae(path, device=device)


__all__ = ["load", "train", "evaluate", "__version__"]
