"""Which TransformerLens hook an OthelloGPT harvest was read at (SAELens's and SAEBench's name for it)."""

from __future__ import annotations

from saelab.model.site import ModelSite
from saelab.sources.othello.model import CONTEXT

NAME = "othello"  # the source's name, in every harvest's source.json
MODEL_NAME = "saelab-othellogpt"  # what SAELens/SAEBench call the committed model (harvest.load_model("default"))


def is_othello_record(record: dict) -> bool:
    """source.json of an OthelloGPT harvest."""
    return record.get("source") == NAME


def othello_site(record: dict) -> ModelSite | None:
    """Layer 0 is the embeddings (block 0's input); layer i ≥ 1 is block i−1's output; no BOS."""
    layer = record.get("layer")
    if not is_othello_record(record) or isinstance(layer, bool) or not isinstance(layer, int):
        return None
    hook = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    model = record.get("model", "default")
    # The model's tokens are moves only: position 0 is the first move, there is no BOS.
    return ModelSite(MODEL_NAME if model == "default" else str(model), hook, max(layer - 1, 0), CONTEXT, False)
