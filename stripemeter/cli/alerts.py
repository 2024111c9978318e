"""`alerts`: the alert rules with the operator's runbook links, for Prometheus or Kubernetes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stripemeter.cli.common import Subcommands, add_command
from stripemeter.domain.config import Settings
from stripemeter.tools.alert_rules import DEFAULT_RUNBOOK_BASE, FORMATS, RULES, RulesError, render


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    try:
        text = Path(args.rules).read_text()
    except OSError as exc:
        print(f"stripemeter alerts: cannot read the rules: {exc} (run it from the repository's root, or"
              " give --rules)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        sys.stdout.write(render(text, args.runbook_base, args.format))
    except RulesError as exc:
        print(f"stripemeter alerts: {exc}", file=sys.stderr)
        return 2
    return 0


def add_alerts(sub: Subcommands) -> None:
    alerts = add_command(
        sub,
        "alerts",
        cmd_alerts,
        "print the alert rules with runbook links under your base URL, as a Prometheus rule file or a "
        "Kubernetes PrometheusRule",
    )
    alerts.add_argument(
        "--runbook-base",
        default=DEFAULT_RUNBOOK_BASE,
        help="where this repository's files are browsable; links become BASE/ops/ALERTS.md#ALERT "
        f"(default: {DEFAULT_RUNBOOK_BASE}, a placeholder)",
    )
    alerts.add_argument("--format", choices=FORMATS, default="prometheus", help="default: %(default)s")
    alerts.add_argument("--rules", default=str(RULES), help="the source rule file (default: %(default)s)")
