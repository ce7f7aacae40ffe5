"""The histogram of non-zero activation values: recorded by evaluation, drawn by the report."""

import json

import torch
from test_report import GROUPS, write_sweep

from saelab.evals.reconstruction import VALUE_BINS, ReconstructionAccumulator
from saelab.report.build import DEFAULT_SECTIONS
from saelab.report.data import load_report_data
from saelab.report.distributions import values_section


def test_value_histogram_by_hand():
    # Bins are 0.2 decades from 1e-6: log10 0.5 = -0.30 falls in bin 28 = [-0.4, -0.2), log10 2 = 0.30 in
    # bin 31 = [0.2, 0.4), log10 0.03 = -1.52 in bin 22 = [-1.6, -1.4) (negative, counted by magnitude);
    # 1e-7 is below the axis, 5000 above it, and zeros are not activations.
    z = torch.tensor([[0.5, 0.0, 2.0, 1e-7], [0.5, -0.03, 5000.0, 0.0]])
    acc = ReconstructionAccumulator(4, 3)
    acc.add(torch.randn(2, 3), torch.randn(2, 3), z)
    h = acc.result("none").activation_value_hist
    assert h["log10_bin_edges"] == VALUE_BINS.tolist() and len(h["counts"]) == 45
    assert h["counts"][28] == 2 and h["counts"][31] == 1 and h["counts"][22] == 1 and sum(h["counts"]) == 4
    assert (h["below"], h["above"], h["negative"]) == (1, 1, 1)


def test_report_draws_one_panel_per_group_and_names_the_missing(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", GROUPS)
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    for row in rows:
        if row["method"] != "topk":
            continue  # the ReLU group has none: the section says so
        path = sweep / row["folder"] / "eval.json"
        ev = json.loads(path.read_text())
        counts = [0] * 45
        counts[20], counts[30] = 5, 7
        ev["activation_value_hist"] = {
            "log10_bin_edges": VALUE_BINS.tolist(),
            "counts": counts,
            "below": 1,
            "above": 0,
            "negative": 0,
        }
        path.write_text(json.dumps(ev))
    section = values_section(load_report_data([sweep]))  # the one section: a whole report draws every figure (~20 s)
    assert section.id == "values" and [f.filename for f in section.figures] == ["values.png"]
    assert section.figures[0].png.startswith(b"\x89PNG")
    assert "Activation-value histogram not present for: relu-l1-a0.5." in section.markdown
    assert "values.png" in section.markdown and values_section in DEFAULT_SECTIONS
