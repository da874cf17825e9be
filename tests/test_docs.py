"""README.md and docs/: the README stays short, links resolve, and the settings, metrics and alerts
tables name exactly what the code and the rule files define."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from service.config import ENV_PREFIX, ServerConfig

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_readme_is_read_in_ten_minutes():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        assert linked.exists(), f"{page.name}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading for #{anchor} in {linked.name}"


def test_serving_settings_table_names_every_setting():
    table = (REPO / "docs" / "serving.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| `--")]
    documented = {row.split("`")[1].removeprefix("--") for row in rows}
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(ServerConfig)}
    assert documented == fields, f"missing {sorted(fields - documented)}, gone {sorted(documented - fields)}"
    for f in dataclasses.fields(ServerConfig):
        assert f"`{ENV_PREFIX}{f.name.upper()}`" in table


def test_operations_page_lists_every_agreed_metric_and_every_alert():
    from test_deploy_static import AGREED_METRICS

    page = (REPO / "docs" / "operations.md").read_text()
    metrics = set(re.findall(r"^\| `(aeguard_\w+)`", page, flags=re.MULTILINE))
    missing, gone = sorted(AGREED_METRICS - metrics), sorted(metrics - AGREED_METRICS)
    assert not missing and not gone, f"metrics missing {missing}, gone {gone}"
    rules = (REPO / "deploy" / "prometheus" / "rules" / "aeguard-alerts.yml").read_text()
    alerts = set(re.findall(r"- alert: (\w+)", rules))
    documented = set(re.findall(r"^\| `(Aeguard\w+)`", page, flags=re.MULTILINE))
    missing, gone = sorted(alerts - documented), sorted(documented - alerts)
    assert not missing and not gone, f"alerts missing {missing}, gone {gone}"
