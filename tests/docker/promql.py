"""Reading the Grafana dashboard: its PromQL queries and the metric and label names they use."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# Grafana fills these in before a query reaches Prometheus; any valid value will do for checks.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$instance": ".*"}
# Labels Prometheus itself attaches at scrape time, so the server's exposition never has them.
TARGET_LABELS = {"instance", "job"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str

    def promql(self) -> str:
        """The expression as Prometheus receives it, Grafana's variables substituted."""
        text = self.expr
        for variable, value in GRAFANA_VARIABLES.items():
            text = text.replace(variable, value)
        return text


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def dashboard_queries(dashboard: dict) -> list[Query]:
    """Every panel target's expression (rows' nested panels included)."""
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append(Query(panel["title"], target["expr"]))
    return queries


def _panels(panels: list[dict]) -> list[dict]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels", [])))
    return flat


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, labels or keywords."""
    text = _STRING.sub('""', expr)
    text = _SELECTOR.sub("{}", text)
    text = _GROUPING.sub("()", text)
    text = _RANGE.sub("[]", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    text = _STRING.sub('""', expr)
    labels = set()
    for selector in _SELECTOR.findall(text):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector))
    for grouping in _GROUPING.findall(text):
        labels |= {name.strip() for name in grouping.split(",") if name.strip()}
    return labels
