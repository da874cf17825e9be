"""Write deploy/k8s/prometheusrule.yaml from the rule files in deploy/prometheus/rules/.

The rule files are the source (promtool checks and unit-tests them); the Prometheus Operator's
PrometheusRule carries the same groups. Run after editing a rule file:

    .venv/bin/python deploy/prometheus/sync_prometheusrule.py

``--check`` exits 1 instead of writing when the manifest is out of date (the test suite checks
the same thing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
RULES_DIR = DEPLOY / "prometheus" / "rules"
MANIFEST = DEPLOY / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules/*.yml by deploy/prometheus/sync_prometheusrule.py:
# edit the rule files (promtool-tested), then run the script. A test fails when they differ.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks and long ones (descriptions) folded."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else ">" if len(value) > 80 else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rule_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    """All groups of all rule files, in file-name order."""
    groups: list[dict[str, Any]] = []
    for path in sorted(rules_dir.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def manifest(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule object holding ``groups``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "aeguard",
            "labels": {"app.kubernetes.io/name": "aeguard", "app.kubernetes.io/component": "server"},
        },
        "spec": {"groups": groups},
    }


def render(groups: list[dict[str, Any]]) -> str:
    return HEADER + yaml.dump(manifest(groups), Dumper=_Dumper, sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest is out of date")
    args = parser.parse_args(argv)
    text = render(rule_groups())
    if args.check:
        current = MANIFEST.read_text() if MANIFEST.exists() else ""
        if current != text:
            print(f"{MANIFEST} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(text)
    print(f"wrote {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
