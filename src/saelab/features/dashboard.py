"""One self-contained HTML page of latent examples: an index with a search box, and each latent's contexts, histogram,
promoted tokens and (OthelloGPT) 8x8 board AUROC maps. Works offline from file://: the data are embedded in the page
(and written beside it as JSON); a small inline script draws the chosen latent.
"""

from __future__ import annotations

import json
from pathlib import Path

from markupsafe import Markup

from saelab.features.examples import ExamplesResult
from saelab.util.atomic import atomic_write_text, dumps_json
from saelab.util.templates import asset, environment

EXAMPLES_JSON = "examples.json"
DASHBOARD_HTML = "dashboard.html"


def _index_item(latent: dict, tokens: dict) -> dict:
    """One entry of the latent index: id, density, the tokens it fires on most; searchable text in data-search."""
    seen: list[str] = []
    for c in latent["top"]:
        t = tokens.get(str(c["tokens"][c["focus"]]), "?")
        if t not in seen:
            seen.append(t)
    promoted = [tokens.get(str(t), "?") for t, _ in latent["promoted"]]
    search = " ".join([str(latent["latent"]), *seen, *promoted]).lower()
    shown = " · ".join(s.replace("\n", "↵") for s in seen[:5])
    return {"latent": latent["latent"], "density": f"{latent['density']:.1e}", "search": search, "shown": shown}


def render_dashboard(data: dict, title: str = "Latent dashboard") -> str:
    """The page for an examples dict (ExamplesResult.to_dict()): index, search box, embedded data, inline script."""
    src = data.get("source", {})
    meta = f"{len(data['latents'])} latents · {data['rows_scanned']} rows of {src.get('activations')} · SAE {src.get('sae', '?')}"
    # "</" inside the JSON would end the script element early; "<\/" parses to the same string.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = environment("saelab.features").get_template("dashboard.html.j2")
    return page.render(
        title=title,
        meta=meta,
        items=[_index_item(l, data["tokens"]) for l in data["latents"]],
        examples_json=EXAMPLES_JSON,
        payload=Markup(payload),
        css=asset("saelab.features", "dashboard.css"),
        js=asset("saelab.features", "dashboard.js"),
    )


def write_dashboard(
    result: ExamplesResult | dict, out: str | Path, title: str = "Latent dashboard"
) -> tuple[Path, Path]:
    """Write out/examples.json and out/dashboard.html (atomically); returns both paths."""
    data = result.to_dict() if isinstance(result, ExamplesResult) else result
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / EXAMPLES_JSON, out / DASHBOARD_HTML
    atomic_write_text(
        json_path, dumps_json(data, separators=(",", ":")) + "\n"
    )  # compact: a third of the indented size
    atomic_write_text(html_path, render_dashboard(data, title))
    return json_path, html_path
