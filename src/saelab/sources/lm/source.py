"""Any Hugging Face causal LM as a data source: its hook names, downstream CE/KL in sweeps, token text for features."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from saelab.data.cache import CACHE_FORMAT, read_row_index, verify_cache
from saelab.data.store import ActivationStore
from saelab.data.token_grid import TokenGrid
from saelab.errors import ConfigError
from saelab.model.site import ModelSite
from saelab.sources.base import FeatureRows
from saelab.sources.lm.site import is_lm_record, lm_site


class LMSource:
    """Activation caches of `saelab lm activations` (manifest.json) and the records of `saelab lm train`."""

    name = "lm"
    description = "a Hugging Face causal LM read at one hook (resid_pre/resid_post/mlp_out/attn_out of block L)"
    score_files: dict[str, tuple[str, ...]] = {}  # downstream CE/KL lives in the row alone

    def owns(self, record: dict) -> bool:
        """An LM cache manifest (a damaged one too: reading it then says what is wrong) or an online-training record."""
        return is_lm_record(record) or record.get("format") == CACHE_FORMAT

    def harvest(self, config, out: Path) -> Path:
        """`saelab lm activations`: config is a sources.lm.harvest.HarvestConfig; its `out` is replaced by `out`."""
        from saelab.sources.lm.harvest import harvest

        harvest(replace(config, out=str(out)))
        return Path(out)

    def site(self, record: dict) -> ModelSite | None:
        """blocks.L.hook_<site> of the recorded model (sources.lm.site.lm_site)."""
        return lm_site(record)

    def sweep_evaluator(self, record: dict, options: dict[str, Any], say: Callable[[str], None]):
        """Downstream CE/KL when the sweep's [eval] sets downstream = true."""
        return Downstream(record, options) if options.get("downstream") and record.get("site") else None

    def feature_rows(self, folder: Path, record: dict, model: str | None) -> FeatureRows:
        """The cache's rows with the (token, window, position) index written beside every shard."""
        manifest = verify_cache(str(folder), checksums=False)
        index = read_row_index(str(folder), manifest)
        grid = TokenGrid.from_index(
            index, int(manifest["context"]), (manifest.get("row_index") or {}).get("first_token_id")
        )
        return FeatureRows(ActivationStore(folder), grid, manifest, model=model or manifest["model"])

    def token_decoder(self, model: str | None) -> Callable[[int], str]:
        """The model's tokenizer, one id at a time."""
        from saelab.sources.lm.model import load_tokenizer

        tok = load_tokenizer(model)
        return lambda i: tok.decode([i])


class Downstream:
    """Downstream CE/KL with the SAE spliced into the recorded model, on text after the harvested windows."""

    def __init__(self, record: dict, options: dict[str, Any]):
        self.source = record
        self.options = options
        self._lm = None

    def __call__(self, sae, folder: Path | None = None) -> dict[str, Any]:
        """CE clean / with the SAE / zero-ablated, the recovered fractions and KL (the model and text load once)."""
        from saelab.sources.lm.downstream import evaluate_downstream
        from saelab.sources.lm.model import LMSpec, load_lm
        from saelab.sources.lm.text import TextConfig, take_windows

        src = self.source
        if self._lm is None:
            model = self.options.get("model", src.get("model"))
            text = self.options.get("text", str(src.get("text_source", "")).split(" [")[0])
            if not model or not text:
                raise ConfigError(
                    "eval.text",
                    text,
                    "downstream evaluation needs the model and text (recorded in the cache, or [eval] model/text)",
                )
            lm = load_lm(LMSpec(model))
            opts = src.get("options") or {}
            context = int(src.get("context", 64))
            skip = int(self.options.get("skip_windows", (src.get("cursor") or {}).get("windows", 0)))
            n_windows = max(1, int(self.options.get("tokens", 4096)) // context)
            text_cfg = TextConfig(text, context, bool(opts.get("prepend_bos", True)))
            batches = take_windows(lm.tokenizer, text_cfg, int(self.options.get("batch_size", 8)), n_windows, skip=skip)
            self._lm = (lm, lm.site(int(src["layer"]), src["site"]), batches, opts.get("outlier_factor"))
        lm, site, batches, outliers = self._lm
        r = evaluate_downstream(lm, site, sae, batches, outliers).to_dict()
        out = {k: r.get(k) for k in ("ce_clean", "ce_sae", "ce_zero", "ce_recovered_zero", "ce_recovered_mean", "kl")}
        if out["ce_sae"] is not None and out["ce_clean"] is not None:
            out["ce_delta"] = out["ce_sae"] - out["ce_clean"]
        return out
