"""Typed settings: config/router.yaml, then HYBRID_ROUTER_* env vars, then CLI flags; loaded once, passed down.

The price table and the policies are read from config/pricing.yaml and policies/ when those exist (relative to the
working directory), else from the copies that ship with the package (`packaged`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from router.core.errors import ConfigError
from router.core.model_routes import Route, parse_route

ENV_PREFIX = "HYBRID_ROUTER_"
DEFAULT_CONFIG = Path("config/router.yaml")
DEFAULT_PRICING = "config/pricing.yaml"
DEFAULT_POLICIES = "policies"
_PACKAGE = Path(str(resources.files("router")))  # pip installs a wheel as plain files, never zipped

FORWARD_HEADERS = ["openai-organization", "openai-project", "openai-beta"]
"""The client headers an upstream receives when its `forward_headers` is unset (and `auth` is `none`)."""
FORWARD_HEADERS_KEYS = ["openai-beta"]
"""The same under `auth: keys`, where the router's own upstream key pays for every tenant."""
FORWARD_HEADERS_ANTHROPIC = ["anthropic-beta"]
"""The default for an upstream of kind `anthropic`, either way (a beta flag picks no workspace to bill)."""

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
OrphanPolicy = Literal["adopt", "cancel", "adopt_or_cancel"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Upstream(_Strict, kw_only=True):
    """One provider endpoint the router forwards to."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]{1,32}$")]
    kind: Literal["openai", "anthropic", "azure"] = "openai"
    base_url: str
    """The API's base URL; for `kind: azure` the resource's endpoint (`https://NAME.openai.azure.com`)."""
    api_key_env: str | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    batch: bool = True
    flex: bool = False
    timeout_s: PositiveFloat = 600.0
    connect_timeout_s: PositiveFloat = 10.0
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    max_connections: PositiveInt = 512
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    """httpx's API over aiohttp's pool (faster, see bench/RESULTS.md) or over httpx's own (httpcore)."""
    forward_headers: list[str] | None = None
    """Client request headers (glob patterns, case-insensitive) passed on to this upstream; others are dropped.
    Unset: `FORWARD_HEADERS`, or with `auth: keys` only `FORWARD_HEADERS_KEYS`; `FORWARD_HEADERS_ANTHROPIC` for
    `kind: anthropic` (see `Settings.forward_headers`)."""
    api_version: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,40}$")] = "2024-10-21"
    """Azure only: the `api-version` of the deployments surface (`/openai/deployments/{deployment}/...`); `v1`:
    the v1 surface (`/openai/v1/...`, no `api-version`)."""
    deployments: dict[str, str] = msgspec.field(default_factory=dict)
    """Azure only: model → the deployment that serves it (for batches, a Global Batch deployment); a model not
    listed goes to the deployment of its own name."""
    orphan_policy: OrphanPolicy = "adopt"
    """Anthropic only: what crash recovery does with a Message Batch it cannot attribute (docs/anthropic.md).
    `cancel` and `adopt_or_cancel` cancel batches of the API key that the router did not record: opt in only
    when no other software creates Message Batches with that key."""


class ProxyKey(_Strict, kw_only=True):
    """A client key, stored as its SHA-256 hex digest, and the tenant it speaks for."""

    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    tenant: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    forward_headers: list[str] | None = None
    """The client headers this tenant's calls pass on, instead of each upstream's list (the same for all its keys)."""


class TenantLimits(_Strict, kw_only=True):
    """One tenant's limits; an unset limit does not apply. Crossing one answers 429 before anything is stored."""

    rpm: PositiveInt | None = None
    """Real-time calls per minute, shared by every replica: a bucket of `rpm` calls that refills at `rpm`/60 a
    second (so a burst of `rpm`, then a steady `rpm` a minute)."""
    max_deferred: PositiveInt | None = None
    """Deferred calls queued or in flight at once (a retry that re-attaches to its stored call is not a new one)."""
    daily_budget_usd: PositiveFloat | None = None
    """Spend per UTC day, every lane at the rate paid, as `GET /v1/usage` counts it; checked before each call, so
    calls admitted before the total crossed it still finish (a deferred call is priced when it is answered)."""
    answer_cache: bool | None = None
    """Whether this tenant's deterministic calls are answered from the answer cache (unset: `answer_cache.enabled`);
    a policy rule's `answer_cache` decides before it for the calls the rule matches."""


_TENANT_PATTERN = r"^(\*|[A-Za-z0-9_.-]{1,64})$"
_TENANT_RE = re.compile(_TENANT_PATTERN)
TenantName = Annotated[str, msgspec.Meta(pattern=_TENANT_PATTERN)]


class Limits(_Strict, kw_only=True):
    """Bounds on what a caller may send."""

    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    max_file_bytes: PositiveInt = 512 * 1024 * 1024
    """An upload to `POST /v1/files` (the whole multipart body), streamed to the upstream, never held whole."""
    max_deadline_s: PositiveFloat = 7 * 24 * 3600.0
    max_wait_s: PositiveFloat = 600.0
    max_held: PositiveInt | None = None
    """Connections held open for deferred answers at once; past it a new held call gets 429 before it is stored.
    Unset: half of the file descriptors left after Redis' pool and a reserve (the fd limit is raised to its
    hard limit at start)."""
    max_header_bytes: PositiveInt = 32 * 1024
    """Header names and values together; more gets 431, before authentication."""
    max_headers: PositiveInt = 100
    """Header lines; more gets 431, before authentication."""
    max_json_depth: Annotated[int, msgspec.Meta(gt=0, le=512)] = 64
    """Nesting of arrays and objects in a client body; deeper gets 400 `json_too_deep`."""
    budget_output_tokens: PositiveInt = 4096
    """Output tokens a call that sets no `max_tokens` reserves against its tenant's `daily_budget_usd` at admission
    (settled with its real cost when it ends)."""
    max_queues: PositiveInt = 1000
    """Deferred queues (one per upstream, endpoint and model) that may hold work at once; a call that would open
    one more gets 429 `too_many_queues` before anything is stored. Idle queues are pruned, so they do not count."""


class BatchSettings(_Strict, kw_only=True):
    """How the deferred lane packs, polls and guards."""

    max_wait_s: PositiveFloat = 300.0
    poll_interval_s: PositiveFloat = 30.0
    max_requests: Annotated[int, msgspec.Meta(gt=0, le=50_000)] = 50_000
    max_bytes: Annotated[int, msgspec.Meta(gt=0, le=200 * 1024 * 1024)] = 200 * 1024 * 1024
    margin_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """A call still without a result is answered in real time (the standard tier) this long before its deadline."""
    flex_s: Annotated[float, msgspec.Meta(ge=0)] = 120.0
    """Where the upstream and model offer flex, an escalation tries it first, this much earlier than `margin_s`
    (0: escalations never use flex)."""
    cancel_lead_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """A batch still running this long before its earliest call escalates is cancelled, and what it finished is
    answered at the batch price (the harvest). Unset: half of `margin_s`."""
    turnaround_prior_s: PositiveFloat = 3600.0
    """Assumed turnaround quantile of a queue that has not seen enough batches yet (see `router.core.turnaround`)."""
    admit_quantile: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95
    """The turnaround quantile a batch must be expected back by, before a call's reserve, to admit the call."""
    turnaround_min_observations: PositiveFloat = 5.0
    """Batches' worth of (decayed) evidence after which the prior no longer counts."""
    turnaround_half_life_s: PositiveFloat = 6 * 3600.0
    """An observed batch counts half as much after this long."""
    probe: bool = True
    """A queue with too little evidence and nothing waiting or in flight admits a call that does not fit the prior
    (a probe, which the escalation ladder still answers in time), so a fresh router learns the real turnaround."""
    result_ttl_s: PositiveFloat = 7 * 24 * 3600.0
    idempotency_ttl_s: PositiveFloat = 24 * 3600.0
    lease_s: PositiveFloat = 10.0
    """Leases on a batch, a poll or an escalation; renewed every third while the work runs, so a dead replica's
    work is taken over within this many seconds."""
    hold_s: PositiveFloat = 24 * 3600.0
    keepalive_s: PositiveFloat = 10.0
    """A held caller receives a byte at least this often (JSON whitespace, or an SSE comment), so client read
    timeouts and idle proxies do not cut the wait."""
    reattach: bool = True
    """An identical request whose earlier attempt lost its connection re-attaches to that call (see README)."""


class WebhookSettings(_Strict, kw_only=True):
    """Signed delivery of deferred results to a caller's `X-Webhook-URL` (Standard Webhooks); off by default."""

    secret_env: str | None = None
    """The env var holding the signing secret (`whsec_<base64>`); unset or empty: webhooks are refused."""
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    """Host globs a webhook URL may name (the SSRF guard); empty: webhooks are refused."""
    allowed_ports: list[Annotated[int, msgspec.Meta(ge=1, le=65535)]] = msgspec.field(default_factory=lambda: [443, 80])
    """Ports a webhook URL may name (a URL without one means 443 for https, 80 for http)."""
    allow_private: bool = False
    """Deliver to hosts that resolve to private, loopback, link-local or metadata addresses (off: such a webhook is
    dropped at delivery, whatever name it was allowed by; a local receiver in tests or a private network needs it)."""
    max_attempts: PositiveInt = 8
    timeout_s: PositiveFloat = 10.0
    backoff_s: PositiveFloat = 10.0
    """The wait before the first retry; it doubles per attempt (with jitter), capped at an hour."""


class AnswerCacheSettings(_Strict, kw_only=True):
    """The answer cache: identical deterministic calls of one tenant answered from Redis (docs/architecture.md)."""

    enabled: bool = False
    """Whether calls use it when neither a policy rule nor the tenant's entry says (opt-in)."""
    ttl_s: PositiveFloat = 3600.0
    """How long a stored answer may be served."""
    max_entries: PositiveInt = 10_000
    """Answers kept per tenant; past it the least recently used go first."""
    max_bytes: PositiveInt = 64 * 1024 * 1024
    """Bytes of answers kept per tenant; past it the least recently used go first (a larger answer is not stored)."""


class PromptCacheSettings(_Strict, kw_only=True):
    """Automatic prompt caching (`http/prompt_cache.py`); a policy rule's `prompt_cache: false` turns it off for the
    calls it matches."""

    enabled: bool = True
    """Mark Anthropic calls' stable prefixes with `cache_control` once seen again; set OpenAI's `prompt_cache_key`."""
    ttl_s: PositiveFloat = 300.0
    """How long a prefix counts as seen (Anthropic's cache lives five minutes, refreshed by every read)."""


class Settings(_Strict, kw_only=True):
    """Everything the router needs to run."""

    upstreams: list[Upstream] = msgspec.field(
        default_factory=lambda: [
            Upstream(name="openai", base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
        ]
    )
    auth: Literal["none", "keys"] = "none"
    keys: list[ProxyKey] = msgspec.field(default_factory=list)
    redis_url: str | None = None
    redis_max_connections: PositiveInt = 64
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_:.-]{1,32}$")] = "hr"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    data_dir: str = ".hybrid-router"
    policies_dir: str = DEFAULT_POLICIES
    pricing_file: str = DEFAULT_PRICING
    shutdown_grace_s: PositiveFloat = 10.0
    """On SIGTERM: held connections are closed at once (their retries re-attach elsewhere), and the process
    exits within this many seconds."""
    gc_tuning: bool = True
    """`serve`: once started, freeze what start-up allocated and space the garbage collections out
    (`telemetry.runtime.tune_gc`), so that collections stop the event loop less often and for less long."""
    limits: Limits = msgspec.field(default_factory=Limits)
    tenants: dict[TenantName, TenantLimits] = msgspec.field(default_factory=dict)
    """Limits per tenant name (the tenant of `keys`, or `default` with `auth: none`); `"*"` applies to every tenant
    not named. Limits belong to the tenant, not to a key, so a tenant with several keys has one allowance."""
    batch: BatchSettings = msgspec.field(default_factory=BatchSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    answer_cache: AnswerCacheSettings = msgspec.field(default_factory=AnswerCacheSettings)
    prompt_cache: PromptCacheSettings = msgspec.field(default_factory=PromptCacheSettings)
    metrics_token_env: str | None = None
    """The env var holding the bearer token `/metrics` requires; unset: `/metrics` is open."""
    azure_deployments: dict[str, str] = msgspec.field(default_factory=dict)
    """Azure OpenAI's paths on the router (`/openai/deployments/{deployment}/...`, `/openai/v1/...`): deployment →
    the model a call to it asks for; a deployment not listed asks for the model of its own name."""
    routes: list[Route] = msgspec.field(default_factory=list)
    """Model routes: calls for one model that cheaper ones may answer where the evidence meets a quality target
    (docs/routing.md). None by default: every call is answered by the model it asks for."""

    def model_route(self, model: str) -> Route | None:
        """The route declared for calls asking for `model`, if any."""
        return next((route for route in self.routes if route.source == model), None)

    def forward_headers(self, upstream: Upstream, tenant: str | None = None) -> list[str]:
        """The header globs a tenant's calls pass on to `upstream`: the tenant's, the upstream's, or the default."""
        if tenant is not None and self.auth == "keys":
            for key in self.keys:
                if key.tenant == tenant and key.forward_headers is not None:
                    return key.forward_headers
        if upstream.forward_headers is not None:
            return upstream.forward_headers
        if upstream.kind == "anthropic":
            return FORWARD_HEADERS_ANTHROPIC
        # With keys, the router's upstream key pays: a tenant must not pick the organization or project it bills.
        return FORWARD_HEADERS_KEYS if self.auth == "keys" else FORWARD_HEADERS

    def tenant_limits(self, tenant: str) -> TenantLimits | None:
        """The limits that apply to `tenant`: its own entry, else the `"*"` entry, else None."""
        return self.tenants[tenant] if tenant in self.tenants else self.tenants.get("*")

    def known_tenants(self) -> list[str]:
        """Every tenant name the settings can authenticate: those of `keys`, or `default` with `auth: none`."""
        return ["default"] if self.auth == "none" else sorted({entry.tenant for entry in self.keys})

    def key_index(self) -> dict[str, str]:
        """SHA-256 hex digest of each proxy key → its tenant (build once, look up per request)."""
        return {entry.sha256: entry.tenant for entry in self.keys}

    def tenant_for_key(self, key: str | None, index: dict[str, str] | None = None) -> str | None:
        """The tenant a bearer key speaks for, or None when it is unknown."""
        if self.auth == "none":
            return "default"
        if not key:
            return None
        return (index if index is not None else self.key_index()).get(hashlib.sha256(key.encode()).hexdigest())


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`HYBRID_ROUTER_BATCH__MAX_WAIT_S=5` → {"batch": {"max_wait_s": "5"}}; values are YAML scalars."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if path:
            _set_path(tree, path, yaml.safe_load(raw) if raw else raw)
    if "REDIS_URL" in environ and "redis_url" not in tree:
        tree["redis_url"] = environ["REDIS_URL"] or None
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_PATH_RE = re.compile(r"at `\$(.*)`")


def convert(raw: Any, type_: type[Any], file: str) -> Any:
    """Turn a decoded YAML tree into `type_`, or raise ConfigError naming file, field and expectation."""
    try:
        return msgspec.convert(raw, type_, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH_RE.search(text)
        field = match.group(1).lstrip(".") if match else None
        problem = _PATH_RE.sub("", text).rstrip(" -")
        raise ConfigError(file, field or None, problem) from exc


def read_yaml(path: Path) -> Any:
    """Parse one YAML file, or raise ConfigError with the line that broke it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"not valid YAML: {exc}") from exc


def packaged(relative: str) -> Path:
    """The copy of `config/router.yaml`, `config/pricing.yaml` or `policies` that ships with the package.

    A wheel carries them under router/defaults/ (force-included from the repository, see pyproject.toml);
    a source checkout (editable install) reads them where they are.
    """
    shipped = _PACKAGE / "defaults" / relative
    return shipped if shipped.exists() else _PACKAGE.parent / relative


def _packaged_fallbacks(settings: Settings) -> Settings:
    """At their default locations, an absent price table or policies directory means the packaged one.

    An explicitly configured path is used as given, so a typo in it fails loudly instead of falling back.
    """
    changes = {
        name: str(packaged(default))
        for name, default in (("pricing_file", DEFAULT_PRICING), ("policies_dir", DEFAULT_POLICIES))
        if getattr(settings, name) == default and not Path(default).exists()
    }
    return msgspec.structs.replace(settings, **changes) if changes else settings


def starter_files(directory: Path) -> list[tuple[Path, Path]]:
    """(packaged file, where `hybrid-router init` writes it under `directory`): config, price table, policies."""
    pairs = [(packaged(name), directory / name) for name in (DEFAULT_CONFIG.as_posix(), DEFAULT_PRICING)]
    policies = sorted(packaged(DEFAULT_POLICIES).glob("*.yaml"))
    return pairs + [(path, directory / DEFAULT_POLICIES / path.name) for path in policies]


def _check_routes(routes: list[Route], file: str) -> None:
    """Each route is sound (no model sent to itself, none listed twice) and each asked-for model has one route."""
    sources = [route.source for route in routes]
    for index, route in enumerate(routes):
        try:
            parse_route(msgspec.to_builtins(route))
        except msgspec.ValidationError as exc:
            raise ConfigError(file, f"routes[{index}]", str(exc)) from exc
        if sources.count(route.source) > 1:
            raise ConfigError(file, f"routes[{index}].from", f"{route.source!r} has more than one route")


def load_settings(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the config file (if any), apply env overrides and then CLI overrides, validate the whole, and point an
    absent default price table or policies directory at the packaged one."""
    file = str(path) if path else "<defaults>"
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(file, None, "expected a mapping at the top level")
        tree = loaded or {}
    tree = _merge(tree, _env_overrides(environ))
    tree = _merge(tree, overrides or {})
    tenants = tree.get("tenants")
    for name, entry in tenants.items() if isinstance(tenants, dict) else ():
        if not isinstance(name, str) or not _TENANT_RE.match(name):
            raise ConfigError(file, "tenants", f"{name!r} is not a tenant name (letters, digits, `_.-`; or `*`)")
        try:  # one by one first, so an error names the tenant (msgspec shows a dict key as `[...]`)
            convert(entry, TenantLimits, file)
        except ConfigError as exc:
            raise ConfigError(file, f"tenants.{name}" + (f".{exc.field}" if exc.field else ""), exc.problem) from exc
    settings: Settings = convert(tree, Settings, file)
    names = [u.name for u in settings.upstreams]
    if not names:
        raise ConfigError(file, "upstreams", "expected at least one upstream")
    if len(set(names)) != len(names):
        raise ConfigError(file, "upstreams", f"upstream names must be unique, got {names}")
    _check_routes(settings.routes, file)
    if settings.auth == "keys" and not settings.keys:
        raise ConfigError(file, "keys", "auth is 'keys' but no keys are configured")
    per_tenant: dict[str, list[str]] = {}
    for key in settings.keys:
        if key.forward_headers is None:
            continue
        if per_tenant.setdefault(key.tenant, key.forward_headers) != key.forward_headers:
            raise ConfigError(file, "keys", f"the keys of tenant {key.tenant!r} name different forward_headers")
    return _packaged_fallbacks(settings)
