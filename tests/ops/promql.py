"""Just enough PromQL reading for the ops tests: which metrics an expression selects, with which
label matchers, and which metric names the code really exports."""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from stripemeter.api import http_metrics
from stripemeter.domain import metrics

# labels Prometheus adds to every scraped series, and the histogram bucket label
TARGET_LABELS = {"job", "instance", "le"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless"}
# aggregation operators may be followed by `by (...)` instead of their parenthesis
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
AGGREGATIONS |= {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def exported_series() -> dict[str, set[str]]:
    """Every series name the API and workers export (from the metric registry modules), with its
    label names; plus Prometheus' own `up`."""
    known: dict[str, set[str]] = {"up": set()}
    for module in (metrics, http_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                assert value._type is not None, value._name  # set by every concrete metric class
                for suffix in SAMPLE_SUFFIXES[value._type]:
                    known[value._name + suffix] = set(value._labelnames)
    return known


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every series selector in ``expr``."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no identifiers inside strings
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    found = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if call or name in KEYWORDS | AGGREGATIONS or re.fullmatch(r"\d\w*", name):
            continue
        if re.search(r"(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$", text[: m.start()]):
            continue  # a label name in a grouping clause
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def unknown_references(expr: str, known: dict[str, set[str]]) -> list[str]:
    """What in ``expr`` names a metric or a label the code does not export."""
    problems = []
    for name, labels in selectors(expr):
        if name not in known:
            problems.append(f"unknown metric {name}")
        elif extra := labels - known[name] - TARGET_LABELS:
            problems.append(f"{name} has no label(s) {sorted(extra)}")
    return problems
