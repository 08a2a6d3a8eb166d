"""One voice on every finished sweep the test suite writes: the decision in results.json, the head saved in
``chosen_head/`` (the plot's star is drawn from the same row: ``pipeline.chosen.chosen_row``), and the one
recommendation line of report.md and report.html name the same layer and head.

``conftest.py`` runs :func:`problems` over every sweep folder under the session's temporary root when the
session ends, and fails the run on any disagreement."""
from __future__ import annotations

import html
import json
from pathlib import Path


def problems(out: Path) -> list[str]:
    """What disagrees in the finished sweep folder ``out`` (empty: one voice)."""
    try:
        summary = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return []  # not a finished sweep (a test's damaged or half-written folder)
    decision = summary.get("decision") if isinstance(summary, dict) else None
    report = out / "report.md"
    if not isinstance(decision, dict) or not report.is_file():
        return []
    layer, said = decision.get("chosen_layer"), []
    text = report.read_text()
    lines = [x for x in text.splitlines() if x.startswith(("**Recommendation:", "**No transfer regime"))]
    head_json = out / "chosen_head" / "head.json"
    if len(lines) > 1:
        said.append(f"report.md has {len(lines)} recommendation lines")
    if not lines:  # the report chooses no layer (no validation rows, rows not the sweep's own): nothing saved
        return [f"{out}: chosen_head/ is saved but the report chooses no layer"] if head_json.is_file() else []
    if layer and head_json.is_file():
        head = json.loads(head_json.read_text())
        if head.get("layer") != layer:
            said.append(f"chosen_head/ holds {head.get('layer')!r}, the decision names {layer!r}")
        if lines and f"`{layer}` with the {head.get('head')} head" not in lines[0]:
            said.append(f"the headline {lines[0][:120]!r} does not name {layer!r} with the {head.get('head')} head")
    elif layer and lines and f"`{layer}`" not in lines[0]:
        said.append(f"the headline {lines[0][:120]!r} does not name {layer!r}")
    page = out / "report.html"
    if layer and page.is_file() and lines and f"<code>{html.escape(layer)}</code>" not in page.read_text():
        said.append(f"report.html does not name {layer!r}")
    return [f"{out}: {s}" for s in said]


def every_problem(root: Path) -> list[str]:
    """:func:`problems` of every folder under ``root`` holding a results.json."""
    return [p for found in sorted(Path(root).rglob("results.json")) for p in problems(found.parent)]
