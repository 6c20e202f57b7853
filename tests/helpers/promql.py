"""The dashboard's PromQL for tests: its expressions, the metric names they read, Grafana's variables filled in."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_SOURCE = ROOT / "config" / "grafana" / "dashboard.py"
DASHBOARD_JSON = ROOT / "config" / "grafana" / "dashboards" / "hybrid-router.json"

ROUTER_METRIC = re.compile(r"\bhybrid_router_[a-z_]+")
GRAFANA_VARIABLE = re.compile(r"\$\{?(__\w+)\}?")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS = re.compile(r"\{[^}]*\}")  # label matchers: their names and values are not metrics
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[a-zA-Z_:][\w:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf"}
)
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def load_dashboard() -> dict[str, Any]:
    """The committed dashboard JSON."""
    board: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return board


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel, in order."""
    return [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]


def router_metrics(expr: str) -> set[str]:
    """The router metric names an expression mentions (any `hybrid_router_*` identifier)."""
    return set(ROUTER_METRIC.findall(expr))


def selected_metrics(expr: str) -> set[str]:
    """Every metric name an expression selects, router's or not: identifiers that are not functions or keywords."""
    text = _LABEL_LIST.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub(" ", expr))))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function / aggregation call
        names.add(name)
    return names


def exported_names(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry exports, including those of labelled metrics that have no series yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
    return names


def instantiate(expr: str, window: str) -> str:
    """The expression as Prometheus can run it: Grafana's interval variables ($__rate_interval, ...) set to `window`."""
    return GRAFANA_VARIABLE.sub(window, expr)
