"""Which TransformerLens hook an LM cache or online-training record was read at (SAELens's and SAEBench's name for it)."""

from __future__ import annotations

from saelab.model.site import ModelSite

# saelab's LM sites (sources.lm.model.SITES) → the TransformerLens hook of block L.
TL_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "hook_attn_out",
}


def is_lm_record(record: dict) -> bool:
    """An LM cache manifest (no "source" key: it predates them) or an online-training record, naming model and site."""
    return (
        record.get("source") in (None, "lm", "lm-online")
        and record.get("site") in TL_HOOKS
        and isinstance(record.get("model"), str)
    )


def lm_site(record: dict) -> ModelSite | None:
    """blocks.L.hook_<site> of the recorded model, with the context and BOS it was harvested with."""
    layer = record.get("layer")
    if not is_lm_record(record) or isinstance(layer, bool) or not isinstance(layer, int):
        return None
    options = record.get("options") if isinstance(record.get("options"), dict) else {}
    context = record.get("context") if isinstance(record.get("context"), int) else 0
    return ModelSite(
        record["model"],
        f"blocks.{layer}.{TL_HOOKS[record['site']]}",
        layer,
        context,
        bool(options.get("prepend_bos", True)),
    )
