"""List the PromQL of every panel of a Grafana dashboard, with its template variables filled in.

Grafana cannot run in the test environment, so the dashboard is checked through its queries:
the tests write them as recording rules for ``promtool check rules`` and evaluate them against a
live Prometheus. Also handy by hand:

    .venv/bin/python deploy/grafana/panel_queries.py deploy/grafana/dashboards/aeguard.json
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "aeguard.json"

#: What each Grafana variable stands for when a query runs outside Grafana: every model and watched
#: instance, a rate window of four 15 s scrapes (Grafana's $__rate_interval for the default scrape),
#: and `up` as the metric drawn beside watch's scores.
DEFAULT_VARIABLES = {
    "model": ".*",
    "instance": ".*",
    "watched_metric": "up",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel."""

    panel: str
    ref_id: str
    expr: str


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]``; raise KeyError on an unknown one."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return variables[name]

    return _VARIABLE.sub(value, expr)


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # panels inside collapsed rows


def panel_queries(
    dashboard: Mapping | Path = DASHBOARD, variables: Mapping[str, str] | None = None
) -> list[PanelQuery]:
    """Every PromQL target of every panel (rows included), variables substituted."""
    doc = json.loads(Path(dashboard).read_text()) if isinstance(dashboard, Path) else dashboard
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    return [
        PanelQuery(panel["title"], target.get("refId", ""), substitute(target["expr"], values))
        for panel in _panels(doc["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DASHBOARD
    for q in panel_queries(path):
        print(f"{q.panel} [{q.ref_id}]\n    {q.expr}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
