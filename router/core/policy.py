"""Policies from `policies/*.yaml`: the first rule that matches a call decides whether it may wait, and until when."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from router.core.deadline import parse_duration
from router.core.errors import ConfigError, InvalidDeadline
from router.core.model_routes import Mode
from router.core.settings import convert, read_yaml

BATCH_FALLBACK_S = 24 * 3600.0  # a `batch` rule with no deadline anywhere gets the providers' batch window

Patterns = str | Annotated[list[str], msgspec.Meta(min_length=1)]
Seconds = str | float


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Match(_Strict, frozen=True):
    """Conditions a call must all meet; an omitted condition matches anything."""

    path: Patterns | None = None
    model: Patterns | None = None
    tenant: Patterns | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    user: Patterns | None = None


class RouteOverride(_Strict, frozen=True):
    """A rule's change to the model route of the calls it matches (unset fields keep the route's own)."""

    mode: Mode | None = None
    quality_target: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    to: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    shadow_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class Rule(_Strict, frozen=True):
    """One named rule as written in a policy file."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    match: Match = msgspec.field(default_factory=Match)
    lane: Literal["realtime", "batch", "auto"] = "auto"
    default_deadline: Seconds | None = None
    max_deadline: Seconds | None = None
    forbid_deferral: bool = False
    task: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")] | None = None
    """The task of the calls this rule matches, for model routes' evidence (before `X-Router-Task`)."""
    route: Literal["off", False] | RouteOverride | None = None
    """`off` (YAML also reads a bare `off` as false): the calls this rule matches keep the model they ask for; a
    mapping changes their route's mode, target, candidates or shadow rate."""
    answer_cache: bool | None = None
    """Whether the deterministic calls this rule matches use the answer cache (unset: the tenant's setting, else
    `answer_cache.enabled`)."""
    prompt_cache: bool | None = None
    """False: the router adds no prompt-cache breakpoints nor `prompt_cache_key` to the calls this rule matches."""


class _RuleFile(_Strict, frozen=True):
    rules: list[Rule] = msgspec.field(default_factory=list)


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """What the policy engine may look at in one call; header names are lower-case."""

    path: str
    model: str | None
    tenant: str
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    metadata: Mapping[str, str] = msgspec.field(default_factory=dict)
    user: str | None = None


class Decision(msgspec.Struct, frozen=True):
    """Whether a call is answered now or may wait (deferred: the lane decision then picks batch, flex or real time),
    its absolute deadline when deferred, the rule that decided, and the task and model-route change that rule names."""

    mode: Literal["realtime", "deferred"]
    deadline: float | None
    rule: str | None
    task: str | None = None
    route: Literal["off", False] | RouteOverride | None = None
    answer_cache: bool | None = None
    """The rule's say on the answer cache (None: it says nothing)."""
    prompt_cache: bool | None = None
    """The rule's `prompt_cache` (None: the global setting decides)."""


class _Glob(msgspec.Struct, frozen=True):
    """Precompiled patterns: exact names in a set, globs in one regex, so matching never re-parses."""

    exact: frozenset[str]
    regex: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: str | list[str], *, globs: bool = True) -> _Glob:
        items = [patterns] if isinstance(patterns, str) else patterns
        magic = [p for p in items if globs and any(c in p for c in "*?[")]
        regex = re.compile("|".join(fnmatch.translate(p) for p in magic)) if magic else None
        return cls(frozenset(p for p in items if p not in magic), regex)

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        return value in self.exact or (self.regex is not None and self.regex.match(value) is not None)


class _Compiled(msgspec.Struct, frozen=True):
    """A rule as `decide` uses it: patterns compiled, durations in seconds."""

    rule: Rule
    file: str
    path: _Glob | None
    model: _Glob | None
    tenant: _Glob | None
    headers: tuple[tuple[str, _Glob], ...]
    metadata: tuple[tuple[str, _Glob], ...]
    user: _Glob | None
    default_s: float | None
    max_s: float | None

    def matches(self, facts: Facts) -> bool:
        return (
            (self.path is None or self.path(facts.path))
            and (self.model is None or self.model(facts.model))
            and (self.tenant is None or self.tenant(facts.tenant))
            and (self.user is None or self.user(facts.user))
            and all(glob(facts.headers.get(name)) for name, glob in self.headers)
            and all(glob(facts.metadata.get(key)) for key, glob in self.metadata)
        )


class Policies(msgspec.Struct, frozen=True):
    """An immutable, ordered rule set and the files it was read from; built by `load_policies`."""

    files: tuple[str, ...] = ()
    compiled: tuple[_Compiled, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in the order they are tried."""
        return tuple(c.rule for c in self.compiled)

    def source(self, name: str) -> str | None:
        """The file that defines the rule called `name`."""
        return next((c.file for c in self.compiled if c.rule.name == name), None)


def _seconds(value: Seconds | None, file: str, field: str, rule: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except InvalidDeadline as exc:
        raise ConfigError(
            file, field, f"expected a duration such as 6h, 90m or PT2H, got {value!r} (rule {rule!r})"
        ) from exc
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(file, field, f"expected a positive duration, got {value!r} (rule {rule!r})")
    return seconds


def _compile(rule: Rule, file: str, index: int) -> _Compiled:
    m, where = rule.match, f"rules[{index}]"
    return _Compiled(
        rule=rule,
        file=file,
        path=None if m.path is None else _Glob.of(m.path),
        model=None if m.model is None else _Glob.of(m.model),
        tenant=None if m.tenant is None else _Glob.of(m.tenant, globs=False),
        headers=tuple((name.lower(), _Glob.of(value)) for name, value in m.headers.items()),
        metadata=tuple((key, _Glob.of(value)) for key, value in m.metadata.items()),
        user=None if m.user is None else _Glob.of(m.user),
        default_s=_seconds(rule.default_deadline, file, f"{where}.default_deadline", rule.name),
        max_s=_seconds(rule.max_deadline, file, f"{where}.max_deadline", rule.name),
    )


_INDEX_RE = re.compile(r"^rules\[(\d+)\]")


def _read_file(path: Path) -> list[Rule]:
    file = str(path)
    raw: Any = read_yaml(path)
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError(file, None, "expected a mapping with a `rules` list at the top level")
    try:
        parsed: _RuleFile = convert(raw, _RuleFile, file)
    except ConfigError as exc:
        problem = exc.problem
        if (exc.field or "").endswith(".lane"):
            problem += ", expected realtime, batch or auto"
        # Name the rule as well as its index: "rules[2].match.model" alone is hard to find in a long file.
        index = _INDEX_RE.match(exc.field or "")
        rules = raw.get("rules")
        if index and isinstance(rules, list) and int(index.group(1)) < len(rules):
            entry = rules[int(index.group(1))]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                problem += f" (rule {entry['name']!r})"
        raise ConfigError(file, exc.field, problem) from exc
    return parsed.rules


def _rule_files(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise ConfigError(str(directory), None, "expected a directory of *.yaml policy files")
    return sorted(directory.glob("*.yaml"), key=lambda p: p.name)


def load_policies(directory: Path) -> Policies:
    """Read every `*.yaml` in `directory` (name order; a missing directory means no rules); ConfigError if broken."""
    files = _rule_files(directory)
    compiled: list[_Compiled] = []
    seen: dict[str, str] = {}
    for path in files:
        for index, rule in enumerate(_read_file(path)):
            if rule.name in seen:
                problem = f"duplicate rule name {rule.name!r}, first defined in {seen[rule.name]}"
                raise ConfigError(str(path), f"rules[{index}].name", problem)
            seen[rule.name] = str(path)
            compiled.append(_compile(rule, str(path), index))
    return Policies(tuple(str(p) for p in files), tuple(compiled))


def _realtime(rule: str | None) -> Decision:
    return Decision("realtime", None, rule)


def decide(
    policies: Policies, facts: Facts, header_deadline: float | None, header_urgent: bool, now: float
) -> Decision:
    """Now or deferred, for one call: the first matching rule, the caller's X-Deadline and the rule's bounds."""
    rule = next((r for r in policies.compiled if r.matches(facts)), None)
    decision = _lane(rule, header_deadline, header_urgent, now)
    says = (rule.rule.task, rule.rule.route, rule.rule.answer_cache, rule.rule.prompt_cache) if rule else ()
    if rule is not None and any(x is not None for x in says):
        r = rule.rule
        return msgspec.structs.replace(
            decision, task=r.task, route=r.route, answer_cache=r.answer_cache, prompt_cache=r.prompt_cache
        )
    return decision


def _lane(rule: _Compiled | None, header_deadline: float | None, header_urgent: bool, now: float) -> Decision:
    name = rule.rule.name if rule else None
    if header_urgent:
        return _realtime(name)
    if rule is None:
        return _realtime(None) if header_deadline is None else Decision("deferred", header_deadline, None)
    if rule.rule.forbid_deferral or rule.rule.lane == "realtime":
        return _realtime(name)
    deadline = header_deadline
    if deadline is None and rule.default_s is not None:
        deadline = now + rule.default_s
    if deadline is None and rule.rule.lane == "batch":
        deadline = now + BATCH_FALLBACK_S
    if deadline is not None and rule.max_s is not None:
        deadline = min(deadline, now + rule.max_s)
    return _realtime(name) if deadline is None else Decision("deferred", deadline, name)


def _signature(directory: Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """Name, inode, mtime and size of every rule file: a cheap stat that changes whenever a file does."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except FileNotFoundError:
        return ()
    except OSError:
        return None
    signature = []
    for entry in entries:
        if entry.name.endswith(".yaml"):
            try:
                st = entry.stat()
            except OSError:
                return None
            signature.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(signature)


class PolicyStore:
    """Holds the current rules; reloads them from disk on demand, keeping the old ones if the new are broken."""

    def __init__(self, directory: Path, policies: Policies | None = None) -> None:
        self.directory = directory
        self._signature = _signature(directory)
        self.current: Policies = policies if policies is not None else load_policies(directory)

    def reload(self) -> list[str]:
        """Re-read the directory; on any error keep the old rules and return the messages (never raises)."""
        self._signature = _signature(self.directory)
        try:
            self.current = load_policies(self.directory)
        except (ConfigError, OSError) as exc:
            return [str(exc)]
        return []

    def maybe_reload(self) -> list[str]:
        """Reload only when a rule file was added, removed or changed since the last look."""
        signature = _signature(self.directory)
        if signature is not None and signature == self._signature:
            return []
        return self.reload()
