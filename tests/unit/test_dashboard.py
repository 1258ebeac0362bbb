"""The Grafana dashboard (dashboards/sfu-grafana.json) uses only metrics and labels that
docs/METRICS.md documents, so that it cannot drift from what the server exposes
(tests/integration/test_metrics_doc.py ties the document to ``/metrics``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "sfu-grafana.json"
METRICS_DOC = REPO / "docs" / "METRICS.md"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
# prometheus-client's process collector (named in METRICS.md's prose, not its table).
PROCESS_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes"}

_ROW = re.compile(r"^\|\s*`(sfu_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
_METRIC = re.compile(r"\b((?:sfu|process|python)_[a-z0-9_]+)\b")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def documented() -> dict[str, tuple[str, set[str]]]:
    """METRICS.md's table: metric name -> (type, label names)."""
    table: dict[str, tuple[str, set[str]]] = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            table[name] = (kind, set(re.findall(r"`([a-z_]+)`", labels)))
    return table


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every panel target."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def base_name(name: str, table: dict[str, tuple[str, set[str]]]) -> str:
    """The documented name of a series: a histogram's ``_bucket``/``_sum``/``_count``
    series map to the histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        stem = name.removesuffix(suffix)
        if stem != name and table.get(stem, ("",))[0] == "histogram":
            return stem
    return name


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[str, set[str]]]:
    table = documented()
    assert len(table) >= 20, f"METRICS.md's table was not parsed: {sorted(table)}"
    return table


def test_dashboard_is_a_prometheus_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_every_metric_in_the_dashboard_is_documented(
    dashboard: dict[str, Any], table: dict[str, tuple[str, set[str]]]
) -> None:
    exprs = expressions(dashboard)
    assert exprs, "the dashboard has no queries"
    unknown: list[str] = []
    for title, expr in exprs:
        for name in _METRIC.findall(expr):
            if name.startswith("sfu_"):
                if base_name(name, table) not in table:
                    unknown.append(f"{title}: {name}")
            elif name not in PROCESS_METRICS:
                unknown.append(f"{title}: {name}")
    assert not unknown, f"metrics not in docs/METRICS.md: {unknown}"


def test_grouping_labels_are_documented(dashboard: dict[str, Any], table: dict[str, tuple[str, set[str]]]) -> None:
    """``sum by (kind)`` and ``{{kind}}`` only on a metric that has a ``kind`` label."""
    wrong: list[str] = []
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            names = {base_name(n, table) for n in _METRIC.findall(expr) if n.startswith("sfu_")}
            allowed = set(TARGET_LABELS)
            for name in names:
                kind, labels = table.get(name, ("", set()))
                allowed |= labels | ({"le"} if kind == "histogram" else set())
            used = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
            used |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            if names and used - allowed:
                wrong.append(f"{panel['title']}: {sorted(used - allowed)} in {expr}")
    assert not wrong, f"labels not documented for these metrics: {wrong}"


def test_histogram_quantile_only_over_documented_histograms(
    dashboard: dict[str, Any], table: dict[str, tuple[str, set[str]]]
) -> None:
    for title, expr in expressions(dashboard):
        if "histogram_quantile" in expr:
            buckets = re.findall(r"\b(sfu_[a-z0-9_]+)_bucket\b", expr)
            assert buckets, f"{title}: histogram_quantile without a _bucket series"
            for name in buckets:
                assert table.get(name, ("",))[0] == "histogram", f"{title}: {name} is not a documented histogram"
        for name in re.findall(r"rate\(\s*(sfu_[a-z0-9_]+)", expr):
            kind = table.get(base_name(name, table), ("",))[0]
            assert kind in ("counter", "histogram"), f"{title}: rate() over {name}, a {kind or 'undocumented'} metric"
