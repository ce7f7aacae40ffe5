"""The sweep report: section by section, the HTML page a person opens and the Markdown beside it."""

import argparse
import base64
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from saelab.errors import ConfigError, DataError
from saelab.report import Figure, Note, Paragraph, Section, build_report, markdown_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTION_IDS = ("summary", "frontiers", "comparisons", "dead", "density", "active", "curves")


# ---- a fake sweep ----------------------------------------------------------------------------


def _ci(estimate, lo, hi, n=200):
    return {"estimate": estimate, "lo": lo, "hi": hi, "n": n, "method": "bootstrap-games"}


# Two methods x 3 seeds at target L0 32, plus one single-seed group at L0 128.
# nmse is clearly separated (topk lower), dead_fraction overlaps; LM metrics only on seed 0 with a row-level ci.
GROUPS = {
    "relu-l1-a0.5": dict(
        method="relu",
        params={"alpha": 0.5, "penalty": "l1"},
        target_l0=32,
        l0=[30.0, 33.0, 34.5],
        nmse=[0.20, 0.21, 0.22],
        dead_fraction=[0.06, 0.03, 0.09],
        good_classifiers=[30, 34, None],
        lm={"ce_recovered_zero": (0.80, 0.78, 0.82), "kl": (0.12, 0.08, 0.16)},
    ),
    "topk-k32": dict(
        method="topk",
        params={"k": 32},
        target_l0=32,
        l0=[32.0, 32.0, 32.0],
        nmse=[0.10, 0.11, 0.12],
        dead_fraction=[0.05, 0.10, 0.02],
        good_classifiers=[40, 44, 42],
        coverage=[0.60, 0.62, 0.64],
        lm={"ce_recovered_zero": (0.95, 0.94, 0.96), "kl": (0.10, 0.05, 0.15)},
    ),
    "topk-k128": dict(
        method="topk", params={"k": 128}, target_l0=128, l0=[128.0], nmse=[0.05], dead_fraction=[0.01], no_curve=True
    ),
}


def _eval_json(rng, l0, n_latents, dead):
    edges = np.linspace(-8.0, 0.0, 33).tolist()
    counts = rng.multinomial(n_latents - dead, np.ones(32) / 32).tolist()
    active = {str(int(k)): int(t) for k, t in zip(np.arange(int(l0) - 5, int(l0) + 6), rng.integers(10, 100, 11))}
    return {
        "l0": l0,
        "firing_density_hist": {"log10_bin_edges": edges, "counts": counts, "dead": dead},
        "active_latents_hist": active,
    }


def _curve(nmse, l0):
    return "".join(
        json.dumps(
            {
                "step": s,
                "tokens": 1024 * s,
                "loss": 1.0 / s,
                "mse": 1.0 / s,
                "nmse": nmse * (1 + 4 / s),
                "l0": l0 * (1 + 1 / s),
                "dead_fraction": 0.0,
                "lr": 1e-3,
            }
        )
        + "\n"
        for s in range(1, 6)
    )


def write_sweep(root: Path, groups: dict, with_folders: bool = True) -> Path:
    """results.jsonl plus one folder per SAE (eval.json, metrics.jsonl) in the sweep's format."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for group, g in groups.items():
        for seed in range(len(g["l0"])):
            name = f"{group}-s{seed}"
            row = {
                "name": name,
                "group": group,
                "method": g["method"],
                "params": g.get("params", {}),
                "n_latents": 256,
                "seed": seed,
                "l0": g["l0"][seed],
                "l0_eps": g["l0"][seed] - 0.5,
                "nmse": g["nmse"][seed],
                "dead_fraction": g["dead_fraction"][seed],
                "tokens": 4096,
                "folder": f"saes/{name}",
            }
            if g.get("target_l0") is not None:
                row["target_l0"] = g["target_l0"]
            for key in ("good_classifiers", "coverage"):
                if key in g:
                    row[key] = g[key][seed]
            if seed == 0 and "lm" in g:
                row["ci"] = {}
                for key, (est, lo, hi) in g["lm"].items():
                    row[key] = est
                    row["ci"][key] = _ci(est, lo, hi)
            lines.append(json.dumps(row))
            if with_folders:
                folder = root / "saes" / name
                folder.mkdir(parents=True)
                dead = int(round(g["dead_fraction"][seed] * 256))
                (folder / "eval.json").write_text(json.dumps(_eval_json(rng, g["l0"][seed], 256, dead)))
                if not g.get("no_curve"):
                    (folder / "metrics.jsonl").write_text(_curve(g["nmse"][seed], g["l0"][seed]))
    (root / "results.jsonl").write_text("\n".join(lines) + "\n")
    return root


# Only the always-present metrics, no SAE folders, no target_l0: matching falls back to mean L0 within ±10%.
PLAIN = {
    "a": dict(method="relu", l0=[32.0, 32.0], nmse=[0.20, 0.21], dead_fraction=[0.1, 0.2]),
    "b": dict(method="topk", l0=[34.0, 34.0], nmse=[0.10, 0.11], dead_fraction=[0.1, 0.1]),
    "c": dict(method="topk", l0=[40.0], nmse=[0.05], dead_fraction=[0.0]),  # 40 is >10% from both 32 and 34
}


# ---- reading the page back ---------------------------------------------------------------------


class Page(HTMLParser):
    """Sections by id with their text, images and tables (cells keep their attributes), plus every URL attribute."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.toc: list[str] = []
        self._section = None
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "a" and (a.get("href") or "").startswith("#"):
            self.toc.append(a["href"][1:])
        if tag == "section":
            self._section = self.sections.setdefault(a["id"], {"text": "", "imgs": [], "tables": []})
        elif self._section is None:
            return
        elif tag == "img":
            self._section["imgs"].append(a["src"])
        elif tag == "table":
            self._section["tables"].append([])
        elif tag == "tr":
            self._section["tables"][-1].append([])
        elif tag in ("td", "th"):
            self._cell = {"text": "", **{k: v for k, v in attrs}}
            self._section["tables"][-1][-1].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._section is not None:
            self._section["text"] += data
        if self._cell is not None:
            self._cell["text"] += data


def _png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    return base64.b64decode(src[len(prefix) :], validate=True)


def _table_rows(section: dict) -> list[dict]:
    """The section's first table as dicts keyed by header."""
    header, *body = section["tables"][0]
    return [{h["text"]: c for h, c in zip(header, row)} for row in body]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sweep = write_sweep(root / "sweep", GROUPS)
    paths = build_report([sweep], root / "out")
    return paths, Page(paths.html.read_text(encoding="utf-8"))


# ---- the full report ---------------------------------------------------------------------------


def test_every_section_has_its_id_and_a_contents_entry(built):
    _, page = built
    for sid in SECTION_IDS:
        assert sid in page.sections, sid
    assert [t for t in page.toc if t in SECTION_IDS] == list(SECTION_IDS)


def test_figures_are_embedded_pngs(built):
    paths, page = built
    expected = {
        "frontiers": 5,
        "dead": 1,
        "density": 1,
        "active": 1,
        "curves": 1,
    }  # frontiers: nmse, CE, KL, classifiers, coverage
    for sid, n in expected.items():
        imgs = page.sections[sid]["imgs"]
        assert len(imgs) == n, (sid, len(imgs))
        for src in imgs:
            assert _png(src).startswith(PNG_SIGNATURE)
    assert sum(len(s["imgs"]) for s in page.sections.values()) == len(paths.figures)


def test_page_is_self_contained(built):
    paths, page = built
    text = paths.html.read_text(encoding="utf-8")
    assert all(u.startswith(("#", "data:image/png;base64,")) for u in page.urls), [u[:40] for u in page.urls]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert not page.tags & {"script", "link", "iframe", "object"}
    assert "saelab report" in text  # the command that built it


def test_summary_has_one_row_per_group_with_the_mean_over_seeds(built):
    _, page = built
    rows = {r["group"]["text"]: r for r in _table_rows(page.sections["summary"])}
    assert set(rows) == set(GROUPS)
    topk, relu, single = rows["topk-k32"], rows["relu-l1-a0.5"], rows["topk-k128"]
    assert (topk["seeds"]["text"], relu["seeds"]["text"], single["seeds"]["text"]) == ("3", "3", "1")
    # mean of 0.10, 0.11, 0.12; Student-t half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    assert float(topk["NMSE"]["data-estimate"]) == pytest.approx(0.11)
    assert topk["NMSE"]["text"] == "0.110 ± 0.025"
    assert float(topk["NMSE"]["data-hi"]) - 0.11 == pytest.approx(4.3027 * 0.01 / np.sqrt(3), rel=1e-3)
    assert float(relu["L0"]["data-estimate"]) == pytest.approx((30.0 + 33.0 + 34.5) / 3)
    assert float(relu["good classifiers"]["data-estimate"]) == pytest.approx(32.0)  # the null seed is left out
    assert relu["good classifiers"]["data-n"] == "2"
    # a single seed with a row-level ci shows that interval; without one, the bare value
    assert topk["CE recovered"]["data-method"] == "bootstrap-games"
    assert float(topk["CE recovered"]["data-lo"]) == pytest.approx(0.94)
    assert single["NMSE"]["data-method"] == "single" and single["NMSE"]["text"] == "0.0500"
    assert relu["coverage"]["text"] == "–"
    for cell in (topk["NMSE"], topk["L0"]):
        assert cell.get("class") == "num"  # right-aligned


def test_matched_pairs_get_the_verdict_their_intervals_support(built):
    _, page = built
    rows = _table_rows(page.sections["comparisons"])
    verdicts = {r["metric"]["text"]: r["verdict"]["text"] for r in rows}
    assert verdicts["NMSE"] == "topk-k32 beats relu-l1-a0.5"  # Welch t over 3 seeds each
    assert verdicts["dead fraction"] == "not separable at this budget"
    # Single seeds: a bootstrap interval of one SAE's evaluation says nothing about its method (issue 31 item 9).
    assert verdicts["CE recovered"] == "not separable at this budget"
    assert verdicts["KL"] == "not separable at this budget"
    tests = {r["metric"]["text"]: r["test"]["text"] for r in rows}
    assert tests["NMSE"] == "welch-t"
    for r in rows:  # every comparison has its raw and its Holm-adjusted p, the adjusted never below the raw
        assert float(r["p (Holm)"]["text"]) >= float(r["p"]["text"])
    assert all("topk-k128" not in (r["A"]["text"], r["B"]["text"]) for r in rows)  # target L0 128 matches nothing
    assert {r["matched at"]["text"] for r in rows} == {"target L0 32"}
    assert "L0" not in verdicts  # L0 is what is matched, not a quality


def test_markdown_links_its_pngs(built):
    paths, _ = built
    text = paths.markdown.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(p.name for p in paths.figures)
    for link in links:
        assert (paths.markdown.parent / link).read_bytes().startswith(PNG_SIGNATURE)
    for sid in SECTION_IDS:
        assert f'<a id="{sid}"></a>' in text
    assert "| topk-k32 | topk | k=32 | 3 | 32.0" in text


def test_notes_name_groups_whose_files_are_missing(built):
    _, page = built
    assert "Training curve (metrics.jsonl) not present for: topk-k128-s0." in page.sections["curves"]["text"]


# ---- absent data, bad input ------------------------------------------------------------------


def test_absent_optional_data_is_noted_in_one_line(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", PLAIN, with_folders=False)
    paths = build_report([sweep], tmp_path / "out")
    page = Page(paths.html.read_text(encoding="utf-8"))
    frontiers = page.sections["frontiers"]
    assert len(frontiers["imgs"]) == 1  # NMSE vs L0 is always drawn
    for label in ("CE recovered", "KL", "good classifiers", "coverage"):
        assert f"{label} vs L0: not present in these results" in frontiers["text"]
    for sid in ("density", "active", "curves"):
        assert "not present" in page.sections[sid]["text"] and not page.sections[sid]["imgs"]
    # no target_l0: a (L0 32) and b (L0 34) are within 10%, c (L0 40) is matched with neither
    rows = _table_rows(page.sections["comparisons"])
    assert {(r["A"]["text"], r["B"]["text"]) for r in rows} == {("a", "b")}
    assert {r["matched at"]["text"] for r in rows} == {"L0 32 vs 34"}
    summary = {r["group"]["text"]: r for r in _table_rows(page.sections["summary"])}
    assert "good classifiers" not in summary["a"]  # only metrics present get a column


def test_no_matched_groups_says_so(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", {"a": PLAIN["a"], "c": PLAIN["c"]}, with_folders=False)
    page = Page(build_report([sweep], tmp_path / "out").html.read_text(encoding="utf-8"))
    assert "Matched-L0 comparisons: not present" in page.sections["comparisons"]["text"]
    assert not page.sections["comparisons"]["tables"]


def test_bad_input_names_the_file_and_line(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", PLAIN, with_folders=False)
    lines = (sweep / "results.jsonl").read_text().splitlines()
    (sweep / "results.jsonl").write_text("\n".join([lines[0], lines[1][:-5], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"results\.jsonl:2: not valid JSON"):
        build_report([sweep], tmp_path / "out")
    (sweep / "results.jsonl").write_text(
        lines[0] + "\n" + json.dumps({**json.loads(lines[1]), "nmse": float("nan")}) + "\n"
    )
    with pytest.raises(DataError, match=r"results\.jsonl:2: nmse is not finite"):
        build_report([sweep], tmp_path / "out")
    with pytest.raises(DataError, match="no results.jsonl") as e:
        build_report([tmp_path], tmp_path / "out")
    assert str(tmp_path) in str(e.value)
    with pytest.raises(DataError, match="no such folder"):
        build_report([tmp_path / "nowhere"], tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_the_same_seed_from_two_folders_is_refused(tmp_path):
    one = write_sweep(tmp_path / "one", {"a": PLAIN["a"]}, with_folders=False)
    two = write_sweep(tmp_path / "two", {"a": PLAIN["a"]}, with_folders=False)
    with pytest.raises(DataError, match="group 'a' seed 0 already read"):
        build_report([one, two], tmp_path / "out")


# ---- extension and the command ---------------------------------------------------------------


def test_extra_sections_are_appended_with_their_figures(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", PLAIN, with_folders=False)
    from saelab.report.plots import figure_png, new_figure

    fig = new_figure(2, 2)
    fig.add_subplot().plot([0, 1], [0, 1])
    ready = Section.from_blocks(
        "scaling", "Scaling fits", [Paragraph("a fit"), Figure("scaling.png", figure_png(fig), "fit")]
    )
    hook = lambda data: Section.from_blocks("counts", "Counts", [Note(f"{len(data.groups)} groups seen")])  # noqa: E731
    paths = build_report([sweep], tmp_path / "out", extra_sections=[ready, hook, lambda data: None])
    page = Page(paths.html.read_text(encoding="utf-8"))
    assert list(page.sections)[-2:] == ["scaling", "counts"]
    assert _png(page.sections["scaling"]["imgs"][0]).startswith(PNG_SIGNATURE)
    assert (tmp_path / "out" / "scaling.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "3 groups seen" in page.sections["counts"]["text"]
    with pytest.raises(ConfigError, match="summary"):
        build_report([sweep], tmp_path / "out2", extra_sections=[Section("summary", "Again", "", "")])


def test_report_command_end_to_end(tmp_path, capsys):
    from saelab.commands.report import register

    sweep = write_sweep(tmp_path / "sweep", PLAIN, with_folders=False)
    parser = argparse.ArgumentParser(prog="saelab")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "rep"
    args = parser.parse_args(["report", str(sweep), "--out", str(out), "--title", "My sweep"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed and str(out / "report.md") in printed
    page_text = (out / "report.html").read_text(encoding="utf-8")
    assert "<title>My sweep</title>" in page_text
    # the quotes are escaped (the entity's spelling is the template engine's choice)
    assert "--title 'My sweep'" not in page_text
    assert f"saelab report {sweep} --out {out} --title 'My sweep'" in html.unescape(page_text)
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(sweep)])  # --out is required


def test_legacy_markdown_table_is_unchanged():
    text = markdown_table(
        [{"name": "a", "l0": 31.96, "nmse": 0.123456}], [("name", "SAE"), ("l0", "L0"), ("nmse", "NMSE")]
    )
    assert text == "| SAE | L0 | NMSE |\n|---|---|---|\n| a | 32.0 | 0.1235 |\n"


def test_report_reads_plain_run_folders(toy_dir, tmp_path):
    """`saelab report` on `saelab train` outputs (one SAE, and a two-SAE run): one row per SAE with its eval.json values."""
    from cli_harness import cli

    acts = toy_dir / "activations.npy"
    common = ["--activations", acts, "--steps", "10", "--batch-size", "128", "--n-latents", "32", "--no-progress"]
    assert cli("train", *common, "--method", "topk", "--k", "3", "--out", tmp_path / "one")[0] == 0
    (tmp_path / "two.toml").write_text(
        f'activations = "{acts}"\nsteps = 10\nbatch_size = 128\nn_latents = 32\nmethod = "topk"\n'
        '[[sae]]\nname = "k2"\nk = 2\n[[sae]]\nname = "k4"\nk = 4\n'
    )
    assert cli("train", "--config", tmp_path / "two.toml", "--out", tmp_path / "two", "--no-progress")[0] == 0
    code, _, err = cli("report", tmp_path / "one", tmp_path / "two", "--out", tmp_path / "rep")
    assert code == 0, err
    from saelab.report.results import read_all_results

    rows = {r.name: r.data for r in read_all_results([tmp_path / "one", tmp_path / "two"])}
    assert sorted(rows) == ["one", "two/k2", "two/k4"]
    ev = json.loads((tmp_path / "two" / "k4" / "eval.json").read_text())
    assert rows["two/k4"]["nmse"] == ev["nmse"] and rows["two/k4"]["l0"] == pytest.approx(4.0)
    assert "two/k2" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(DataError, match="no SAE folder"):
        read_all_results([tmp_path / "rep"])
