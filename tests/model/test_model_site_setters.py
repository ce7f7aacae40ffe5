"""cfg's SAELens/SAEBench hook fields accept being written back (SAEBench's load_and_format_sae does it)."""

import pytest

from saelab.config import SAEConfig
from saelab.model.site import ModelSite, SiteView


def _cfg(site):
    return SiteView(SAEConfig(n_latents=8, method="topk", method_params={"k": 2}, d_in=4), site)


def test_writing_back_the_same_values_changes_nothing():
    site = ModelSite("tiny", "blocks.1.hook_resid_post", 1, 32, True)
    cfg = _cfg(site)
    for name in ("model_name", "hook_name", "hook_layer", "context_size", "prepend_bos", "hook_head_index"):
        setattr(cfg, name, getattr(cfg, name))  # what sae_bench's _standardize_sae_cfg does
    assert cfg.site == site and cfg.normalize_activations == "none"


def test_a_new_value_moves_the_site_and_no_site_refuses_one():
    cfg = _cfg(ModelSite("tiny", "blocks.1.hook_resid_post", 1, 32, True))
    cfg.hook_layer, cfg.hook_name = 0, "blocks.0.hook_resid_post"
    assert cfg.site == ModelSite("tiny", "blocks.0.hook_resid_post", 0, 32, True)
    bare = _cfg(None)
    bare.hook_name = None  # equal: accepted
    with pytest.raises(AttributeError, match="no model site"):
        bare.hook_name = "blocks.0.hook_resid_post"
    with pytest.raises(AttributeError, match="only None"):
        cfg.hook_head_index = 2
