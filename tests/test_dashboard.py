"""The Grafana dashboard and its stack: generated from source, valid, reading only metrics the router exports."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from grafana_foundation_sdk.models.prometheus import Dataquery

from router.telemetry.metrics import REGISTRY
from tests.helpers.promql import (
    DASHBOARD_JSON,
    DASHBOARD_SOURCE,
    ROOT,
    exported_names,
    expressions,
    load_dashboard,
    panels,
    router_metrics,
    selected_metrics,
)

CONFIG = ROOT / "config"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def source() -> ModuleType:
    """config/grafana/dashboard.py, imported from its path (config/ is not a package)."""
    spec = importlib.util.spec_from_file_location("hybrid_router_dashboard", DASHBOARD_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return load_dashboard()


def test_committed_json_is_what_the_source_generates(source: ModuleType) -> None:
    generated: str = source.render()
    assert DASHBOARD_JSON.read_text() == generated, "stale: run `python config/grafana/dashboard.py`"


def test_check_mode_fails_on_a_stale_file_and_write_mode_fixes_it(source: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "dashboards" / "hybrid-router.json"
    assert source.main(["--check"], out=out) == 1  # missing
    out.parent.mkdir()
    out.write_text("{}\n")
    assert source.main(["--check"], out=out) == 1
    assert source.main([], out=out) == 0
    assert source.main(["--check"], out=out) == 0
    assert out.read_text() == DASHBOARD_JSON.read_text()


def test_json_decodes_into_the_sdk_model_and_back_unchanged(board: dict[str, Any]) -> None:
    register_default_plugins()  # so targets decode as Prometheus queries, not opaque dicts
    model = Dashboard.from_json(board)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == board  # nothing the model does not know was dropped
    assert model.panels
    for panel in model.panels:
        assert isinstance(panel, Panel | RowPanel)
        if isinstance(panel, Panel):
            assert panel.targets and all(isinstance(t, Dataquery) and t.expr for t in panel.targets), panel.title


def test_dashboard_structure(board: dict[str, Any]) -> None:
    assert isinstance(board["schemaVersion"], int)
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert x >= 0 and x + w <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_the_required_views_are_there(board: dict[str, Any]) -> None:
    exprs = expressions(board)
    used = set().union(*(router_metrics(e) for e in exprs))
    required = {
        "hybrid_router_savings_usd_total",
        "hybrid_router_baseline_cost_usd_total",
        "hybrid_router_requests_total",
        "hybrid_router_tokens_total",
        "hybrid_router_cost_usd_total",
        "hybrid_router_queue_depth",
        "hybrid_router_batches_inflight",
        "hybrid_router_batch_turnaround_seconds_bucket",
        "hybrid_router_deadline_escalations_total",
        "hybrid_router_deadline_misses_total",
        "hybrid_router_late_batch_results_total",
        "hybrid_router_proxy_overhead_seconds_bucket",
        "hybrid_router_upstream_latency_seconds_bucket",
        "hybrid_router_turnaround_estimate_seconds",
        "hybrid_router_turnaround_evidence_batches",
        "hybrid_router_batches_cut_total",
        "hybrid_router_harvested_lines_total",
        "hybrid_router_paid_twice_total",
        "hybrid_router_held_connections",
        "hybrid_router_held_refused_total",
        "hybrid_router_held_cut_total",
        "hybrid_router_deferred_reattached_total",
        "hybrid_router_tenant_limit",
        "hybrid_router_tenant_headroom",
        "hybrid_router_tenant_refused_total",
        "hybrid_router_deferred_unknown_model_total",
        "hybrid_router_deferred_queues_refused_total",
        "hybrid_router_lever_savings_usd_total",
        "hybrid_router_lever_losses_usd_total",
        "hybrid_router_losses_usd_total",
        "hybrid_router_route_decisions_total",
        "hybrid_router_route_learning_cost_usd_total",
        "hybrid_router_route_cascade_seconds_bucket",
        "hybrid_router_route_evidence_calls",
        "hybrid_router_route_quality_lower_bound",
        "hybrid_router_route_moved_share",
    }
    assert required <= used, required - used
    headlines = {p["title"]: p["targets"][0]["expr"] for p in panels(board) if p["type"] == "stat"}
    assert "hybrid_router_paid_twice_total" in headlines["Calls paid twice"]
    turnaround = [e for e in exprs if "batch_turnaround_seconds_bucket" in e]
    assert {q for q in ("0.5", "0.95", "0.99") if any(f"histogram_quantile({q}," in e for e in turnaround)} == {
        "0.5",
        "0.95",
        "0.99",
    }
    # Redis-backed gauges are the same on every replica: summing them would multiply by the replica count.
    for expr in exprs:
        for gauge in ("hybrid_router_queue_depth", "hybrid_router_batches_inflight"):
            if gauge in expr:
                assert expr.startswith("max"), expr
        for gauge in REPLICATED_GAUGES:
            for found in re.finditer(rf"\b{gauge}\b", expr):
                assert _AGGREGATED_BY_MAX_OR_MIN.search(expr[: found.start()]), expr


# Gauges every replica reports alike (read from Redis, or configuration): aggregated with max or min, never summed.
REPLICATED_GAUGES = (
    "hybrid_router_queue_depth",
    "hybrid_router_batches_inflight",
    "hybrid_router_turnaround_estimate_seconds",
    "hybrid_router_turnaround_evidence_batches",
    "hybrid_router_tenant_limit",
    "hybrid_router_tenant_headroom",
    "hybrid_router_route_evidence_calls",
    "hybrid_router_route_quality_lower_bound",
    "hybrid_router_route_moved_share",
)
_AGGREGATED_BY_MAX_OR_MIN = re.compile(r"\b(?:max|min)(?:\s+by\s*\([^)]*\))?\s*\(\s*$")


def test_savings_are_net_of_losses_and_split_by_lever(board: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(board) if p["type"] != "row"}
    # Counters only grow: a cascade's thrown-away cheap call is counted as a loss, so every savings view subtracts it.
    for title in ("Savings", "Savings %", "Savings by lane (USD/h)", "Savings % of the real-time baseline"):
        [expr] = [t["expr"] for t in by_title[title]["targets"]]
        assert {"hybrid_router_savings_usd_total", "hybrid_router_losses_usd_total"} <= router_metrics(expr), title
    levers = by_title["Net savings by lever (USD/h)"]
    [expr] = [t["expr"] for t in levers["targets"]]
    assert "sum by (lever)" in expr
    assert router_metrics(expr) == {"hybrid_router_lever_savings_usd_total", "hybrid_router_lever_losses_usd_total"}
    assert levers["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    routes = by_title["Route decisions by reason and model (per second)"]
    assert "sum by (route, model, reason)" in routes["targets"][0]["expr"]
    cascade = [t["expr"] for t in by_title["Cascade added latency"]["targets"]]
    assert [e.split(",")[0] for e in cascade] == [f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]


def test_a_lever_with_only_losses_or_only_savings_keeps_its_series(source: ModuleType) -> None:
    # `a - b` in PromQL drops a label set missing on either side: net() fills the missing side with 0.
    expr: str = source.net("S", "L")
    assert expr == "(S or L * 0) - (L or S * 0)"


def test_every_metric_the_router_exports_has_a_panel(board: dict[str, Any]) -> None:
    used = set().union(*(router_metrics(e) for e in expressions(board)))
    families = {family.name: family.type for family in REGISTRY.collect()}
    assert families["hybrid_router_requests"] == "counter" and families["hybrid_router_queue_depth"] == "gauge"
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    missing = {name for name, kind in families.items() if not {name + s for s in suffixes[kind]} & used}
    assert not missing, f"metrics of router/telemetry/metrics.py without a panel: {sorted(missing)}"


def test_every_metric_the_dashboard_reads_is_exported_by_the_router(board: dict[str, Any]) -> None:
    exported = exported_names(REGISTRY)
    assert "hybrid_router_requests_total" in exported and "hybrid_router_proxy_overhead_seconds_bucket" in exported
    for expr in expressions(board):
        names = router_metrics(expr)
        assert names, f"no router metric in {expr!r}"
        assert names <= exported, (
            f"{sorted(names - exported)} in {expr!r} are not exported by router/telemetry/metrics.py"
        )
        assert selected_metrics(expr) == names, f"{expr!r} reads metrics that are not the router's"


def test_metric_name_extraction() -> None:
    expr = 'sum by (lane) (rate(hybrid_router_x_total{tenant="up"}[5m])) / ignoring(lane) group_left up * 1e3'
    assert router_metrics(expr) == {"hybrid_router_x_total"}
    assert selected_metrics(expr) == {"hybrid_router_x_total", "up"}


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((CONFIG / "docker-compose.yml").read_text())
    return compose


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (host path, mode) of a service's volumes."""
    out: dict[str, tuple[str, str]] = {}
    for volume in service.get("volumes", []):
        host, container, *mode = volume.split(":")
        out[container] = (host, mode[0] if mode else "rw")
    return out


def test_compose_stack_structure() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "router", "prometheus", "grafana"}
    assert services["redis"]["image"].startswith("redis:7.")
    router = services["router"]
    assert (CONFIG / router["build"]["context"] / router["build"].get("dockerfile", "Dockerfile")).is_file()
    assert router["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert router["environment"]["OPENAI_API_KEY"].startswith("${OPENAI_API_KEY")
    # 0.0.0.0:8080 inside the container (the image's HYBRID_ROUTER_* settings, test_packaging) with the shipped
    # `auth: none`: `serve` starts only with --insecure-no-auth.
    assert router["command"] == ["serve", "--insecure-no-auth"]
    mounts = _mounts(router)
    assert mounts["/app/config"] == ("./", "ro") and mounts["/app/policies"] == ("../policies", "ro")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert _mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"] == ("./prometheus.yml", "ro")
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
        for host, _ in _mounts(service).values():
            if host.startswith("."):
                assert (CONFIG / host).exists(), host


def test_grafana_provisioning_matches_the_stack() -> None:
    mounts = _mounts(_compose()["services"]["grafana"])
    provisioning = CONFIG / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning"] == ("./grafana/provisioning", "ro")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    host, _ = mounts[providers[0]["options"]["path"]]  # the provider reads the folder the JSON is mounted at
    assert (CONFIG / host).resolve() == DASHBOARD_JSON.parent


def test_prometheus_scrapes_the_router() -> None:
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert [t for c in job["static_configs"] for t in c["targets"]] == ["router:8080"]
