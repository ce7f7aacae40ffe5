"""The data sources: one registry, each source owning its records, the hook each records, old records still read."""

import json

import numpy as np
import pytest

from saelab.config import SAEConfig
from saelab.data.store import ActivationStore
from saelab.data.toy import ToyConfig
from saelab.errors import ConfigError, DataError
from saelab.experiments.sweep_rows import Evaluators
from saelab.features.data import load_feature_data
from saelab.formats.folder import load_sae, save_sae
from saelab.model.sae import SparseAutoencoder
from saelab.model.site import SITE_FIELD, site_from_source
from saelab.sources.base import Source
from saelab.sources.othello.harvest import HarvestConfig
from saelab.sources.registry import SOURCES, get_source, source_of

LM_RECORD = {
    "model": "tiny-gpt2",
    "site": "mlp_out",
    "layer": 1,
    "dtype": "float32",
    "d_in": 8,
    "context": 32,
    "options": {"prepend_bos": True},
}
OTHELLO_RECORD = {"source": "othello", "model": "default", "layer": 3, "trim_start": 5, "trim_end": 5}


def test_every_registered_source_implements_the_protocol_under_its_own_name():
    assert {"lm", "othello", "toy"} <= set(SOURCES)
    for name, source in SOURCES.items():
        assert isinstance(source, Source), name
        assert source.name == name and get_source(name) is source
        assert source.description


def test_an_unknown_source_name_is_one_line_naming_the_field_and_value():
    with pytest.raises(ConfigError) as err:
        get_source("imagenet")
    assert str(err.value) == "source='imagenet': must be one of lm, othello, toy"
    assert "\n" not in str(err.value)


def test_each_record_has_exactly_one_owner_and_user_data_none():
    records = {
        "lm": LM_RECORD,
        "lm-online": {**LM_RECORD, "source": "lm-online"},
        "othello": OTHELLO_RECORD,
        "toy": {"source": "toy"},
    }
    for label, record in records.items():
        owners = [s.name for s in SOURCES.values() if s.owns(record)]
        assert owners == [label.split("-")[0]], label
        assert source_of(record).name == owners[0]
    for unknown in (None, {}, {"layer": 3}, {"source": "imagenet", "layer": 1}, {**LM_RECORD, "site": "logits"}):
        assert source_of(unknown) is None and site_from_source(unknown) is None


def test_only_sources_of_a_model_have_a_site_and_the_recorded_site_wins():
    assert site_from_source(LM_RECORD).hook_name == "blocks.1.hook_mlp_out"
    assert site_from_source({**OTHELLO_RECORD, "layer": 1}).hook_name == "blocks.0.hook_resid_post"
    assert get_source("toy").site({"source": "toy"}) is None
    # A record that names its hook is read as written, whichever source it came from.
    recorded = {"model_name": "gpt2", "hook_name": "blocks.7.hook_resid_pre", "context_size": 128}
    site = site_from_source({**LM_RECORD, SITE_FIELD: recorded})
    assert (site.model_name, site.hook_name, site.hook_layer, site.context_size) == (
        "gpt2",
        "blocks.7.hook_resid_pre",
        7,
        128,
    )
    with pytest.raises(DataError, match="model_site"):
        site_from_source({**LM_RECORD, SITE_FIELD: {"model_name": "gpt2"}})


def test_a_damaged_lm_cache_is_read_by_the_lm_source_which_names_the_bad_field(tmp_path):
    from saelab.data.cache import CACHE_FORMAT

    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {"format": CACHE_FORMAT, **LM_RECORD, "tokenizer": "t", "text_source": "t.txt", "n_rows": 0, "shards": []}
            | {"complete": True, "site": 3}
        )
    )
    assert source_of(json.loads((tmp_path / "manifest.json").read_text())).name == "lm"
    with pytest.raises(DataError, match="site=3"):
        load_feature_data(tmp_path)


def test_an_sae_folder_from_an_older_saelab_keeps_its_hook(tmp_path):
    """Folders written before harvests recorded model_site: the source's reader still names the hook."""
    sae = SparseAutoencoder(SAEConfig(n_latents=16, method="topk", method_params={"k": 2}, d_in=8))
    save_sae(sae, tmp_path / "old", {"source": OTHELLO_RECORD})
    record = json.loads((tmp_path / "old" / "saelab.json").read_text())
    assert SITE_FIELD not in record["source"]
    cfg = load_sae(tmp_path / "old").cfg
    assert (cfg.model_name, cfg.hook_name, cfg.hook_layer, cfg.context_size, cfg.prepend_bos) == (
        "saelab-othellogpt",
        "blocks.2.hook_resid_post",
        2,
        59,
        False,
    )
    meta = json.loads((tmp_path / "old" / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.2.hook_resid_post"


def test_an_othello_harvest_records_its_hook_and_reads_back_as_feature_rows(tmp_path):
    out = get_source("othello").harvest(
        HarvestConfig(layer=2, games=6, trim_start=3, trim_end=4, batch_games=6), tmp_path
    )
    record = json.loads((out / "source.json").read_text())
    old_style = {k: v for k, v in record.items() if k != SITE_FIELD}
    # What the harvest wrote is what the source says of a record without it.
    assert record[SITE_FIELD] == get_source("othello").site(old_style).to_dict()
    assert record[SITE_FIELD]["hook_name"] == "blocks.1.hook_resid_post"
    data = load_feature_data(out)
    assert data.kind == "othello" and data.labels.shape == (data.store.n_rows, 64)
    assert data.store.n_rows == int((data.grid.rows >= 0).sum()) == record["rows"]
    row = int(np.flatnonzero(data.grid.row_position == 10)[0])  # a row 10 moves into its game
    tokens, rows, at = data.grid.context_of(row, before=2, after=0)
    assert rows[at] == row and data.text()(tokens) == [
        f"{'abcdefgh'[t % 8]}{t // 8 + 1}" for t in tokens
    ]  # a move reads as the square it plays


def test_toy_data_harvests_through_the_registry_but_has_no_site_evaluations_or_tokens(tmp_path):
    toy = get_source("toy")
    out = toy.harvest(ToyConfig(n_features=8, d=4, n_samples=50, seed=0), tmp_path / "toy")
    assert ActivationStore(out / "activations.npy").n_rows == 50  # beside the true dictionary and codes
    assert toy.sweep_evaluator({"source": "toy"}, {"downstream": True}, print) is None
    with pytest.raises(DataError, match="no tokens"):
        toy.feature_rows(out, {"source": "toy"}, None)
    with pytest.raises(DataError, match="neither manifest.json"):
        load_feature_data(out)  # toy folders carry no provenance record


def test_sweep_evaluations_come_from_the_source_and_its_eval_options(tmp_path):
    sae = SparseAutoencoder(SAEConfig(n_latents=16, method="topk", method_params={"k": 2}, d_in=8))
    # No source, toy data, Othello with board = false, an LM without downstream: reconstruction only.
    for record, options in (
        (None, {"downstream": True}),
        ({"source": "toy"}, {}),
        (OTHELLO_RECORD, {"board": False}),
        (LM_RECORD, {}),
    ):
        assert Evaluators(record, options, print).extra(sae, tmp_path) == {}
    # An LM with downstream = true and no text to read is refused naming the field.
    with pytest.raises(ConfigError, match="eval.text"):
        Evaluators({**LM_RECORD, "text_source": ""}, {"downstream": True}, print).extra(sae, tmp_path)
