"""Policy rules: loading, error reporting, matching, the decision table, and hot reload."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.errors import ConfigError
from router.core.policy import Decision, Facts, Policies, PolicyStore, RouteOverride, decide, load_policies

DATA = Path(__file__).parent / "data"
SHIPPED = Path(__file__).parent.parent / "policies"
NOW = 1_800_000_000.0
H = 3600.0


def facts(
    path: str = "/v1/chat/completions",
    model: str | None = "gpt-4o",
    tenant: str = "default",
    headers: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    user: str | None = None,
) -> Facts:
    return Facts(path=path, model=model, tenant=tenant, headers=headers or {}, metadata=metadata or {}, user=user)


def write_rules(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def one_rule(tmp_path: Path, body: str) -> Policies:
    write_rules(tmp_path, "rules.yaml", "rules:\n  - name: r\n" + body)
    return load_policies(tmp_path)


# --- loading -----------------------------------------------------------------------------------------------


def test_files_in_name_order_rules_in_file_order() -> None:
    policies = load_policies(DATA / "policies_ordered")
    assert [r.name for r in policies.rules] == ["urgent-support", "evals", "catch-evals-late", "backfill"]
    assert [Path(f).name for f in policies.files] == ["10-first.yaml", "20-second.yaml"]
    assert Path(policies.source("backfill") or "").name == "20-second.yaml"
    assert policies.source("nope") is None


def test_missing_directory_means_no_rules(tmp_path: Path) -> None:
    policies = load_policies(tmp_path / "absent")
    assert policies.rules == ()
    assert decide(policies, facts(), None, False, NOW) == Decision("realtime", None, None)


def test_empty_file_means_no_rules(tmp_path: Path) -> None:
    write_rules(tmp_path, "empty.yaml", "# nothing yet\n")
    assert load_policies(tmp_path).rules == ()


def test_broken_file_names_file_field_and_rule() -> None:
    with pytest.raises(ConfigError) as info:
        load_policies(DATA / "policies_broken")
    error = info.value
    assert error.file.endswith("20-bad.yaml")
    assert error.field == "rules[1].match.model"
    assert "evals-nightly" in str(error)
    assert "rules[1].match.model" in str(error)
    assert "Expected `str | array | null`" in str(error)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("rules:\n  - name: a\n    lane: sometimes\n", "rules[0].lane", "expected realtime, batch or auto"),
        ("rules:\n  - name: a\n    match: {modle: x}\n", "rules[0].match", "unknown field `modle`"),
        ("rules:\n  - name: a\n    deadline: 6h\n", "rules[0]", "unknown field `deadline`"),
        ("rules:\n  - lane: batch\n", "rules[0]", "missing required field `name`"),
        ("rules:\n  - name: a\n    match: {model: []}\n", "rules[0].match.model", "length >= 1"),
        ("rules:\n  - name: a\n    default_deadline: soon\n", "rules[0].default_deadline", "expected a duration"),
        ("rules:\n  - name: a\n    max_deadline: 0\n", "rules[0].max_deadline", "positive duration"),
        ("rules:\n  - name: a\n    max_deadline: now\n", "rules[0].max_deadline", "expected a duration"),
        ("rules:\n  - name: a\n  - name: a\n", "rules[1].name", "duplicate rule name 'a'"),
        ("rules:\n  - name: 'has space'\n", "rules[0].name", "Expected `str` matching"),
        ("- name: a\n", None, "expected a mapping"),
        ("rules: [\n", None, "not valid YAML"),
    ],
)
def test_rule_file_errors(tmp_path: Path, text: str, field: str | None, problem: str) -> None:
    write_rules(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    assert info.value.field == field
    assert problem in str(info.value)
    assert "bad.yaml" in str(info.value)


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    write_rules(tmp_path, "10-a.yaml", "rules:\n  - name: same\n")
    write_rules(tmp_path, "20-b.yaml", "rules:\n  - name: same\n")
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    assert info.value.file.endswith("20-b.yaml")
    assert "10-a.yaml" in info.value.problem


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "policies", "")
    with pytest.raises(ConfigError):
        load_policies(path)


def test_numeric_durations_are_seconds(tmp_path: Path) -> None:
    policies = one_rule(tmp_path, "    default_deadline: 7200\n")
    assert decide(policies, facts(), None, False, NOW) == Decision("deferred", NOW + 2 * H, "r")


# --- matching ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "hit", "miss"),
    [
        ("path: /v1/chat/completions", facts(), facts(path="/v1/embeddings")),
        ("path: '/v1/*'", facts(path="/v1/embeddings"), facts(path="/v2/embeddings")),
        ("path: [/v1/embeddings, /v1/responses]", facts(path="/v1/responses"), facts()),
        ("model: 'gpt-4o*'", facts(model="gpt-4o-2024-08-06"), facts(model="gpt-5")),
        ("model: gpt-4o", facts(model="gpt-4o"), facts(model="gpt-4o-mini")),
        ("model: gpt-4o", facts(model="gpt-4o"), facts(model=None)),
        ("model: [gpt-5, 'claude-*']", facts(model="claude-sonnet-4"), facts(model="gpt-5-mini")),
        ("tenant: [research, evals]", facts(tenant="evals"), facts(tenant="default")),
        ("tenant: 'res*'", facts(tenant="res*"), facts(tenant="research")),
        ("headers: {X-Workload: eval}", facts(headers={"x-workload": "eval"}), facts(headers={"x-workload": "Eval"})),
        ("headers: {x-job: 'eval-*'}", facts(headers={"x-job": "eval-7"}), facts()),
        ("metadata: {job: 'eval-*'}", facts(metadata={"job": "eval-nightly"}), facts(metadata={"job": "prod"})),
        ("metadata: {job: 'eval-*'}", facts(metadata={"job": "eval-1"}), facts(headers={"job": "eval-1"})),
        ("user: 'batch-*'", facts(user="batch-7"), facts(user=None)),
        ("user: [alice, 'svc-*']", facts(user="alice"), facts(user="bob")),
        (
            "path: /v1/chat/completions\n      tenant: research\n      headers: {x-a: '1'}",
            facts(tenant="research", headers={"x-a": "1"}),
            facts(tenant="research", headers={"x-a": "2"}),
        ),
    ],
)
def test_match_conditions(tmp_path: Path, match: str, hit: Facts, miss: Facts) -> None:
    policies = one_rule(tmp_path, f"    match:\n      {match}\n    lane: batch\n")
    assert decide(policies, hit, None, False, NOW).rule == "r"
    assert decide(policies, miss, None, False, NOW).rule is None


def test_first_matching_rule_wins() -> None:
    policies = load_policies(DATA / "policies_ordered")
    eval_call = facts(headers={"x-workload": "eval"})
    assert decide(policies, eval_call, None, False, NOW) == Decision("deferred", NOW + 6 * H, "evals")
    other_model = facts(model="gpt-5", headers={"x-workload": "eval"})
    assert decide(policies, other_model, None, False, NOW) == Decision("realtime", None, "catch-evals-late")
    support = facts(tenant="support", headers={"x-workload": "eval"})
    assert decide(policies, support, NOW + H, False, NOW) == Decision("realtime", None, "urgent-support")
    backfill = facts(path="/v2/x", metadata={"job": "backfill-3"}, user="exact-user")
    assert decide(policies, backfill, None, False, NOW) == Decision("deferred", NOW + 2 * H, "backfill")


# --- the decision table ------------------------------------------------------------------------------------

RULES = """\
rules:
  - {name: batch-plain, match: {tenant: batch-plain}, lane: batch}
  - {name: batch-default, match: {tenant: batch-default}, lane: batch, default_deadline: 6h}
  - {name: batch-max, match: {tenant: batch-max}, lane: batch, max_deadline: 2h}
  - {name: auto-plain, match: {tenant: auto-plain}}
  - {name: auto-default, match: {tenant: auto-default}, default_deadline: 6h, max_deadline: 12h}
  - {name: realtime, match: {tenant: realtime}, lane: realtime, default_deadline: 6h}
  - {name: forbid, match: {tenant: forbid}, lane: batch, forbid_deferral: true}
"""


@pytest.mark.parametrize(
    ("tenant", "header", "urgent", "lane", "deadline"),
    [
        ("nobody", None, False, "realtime", None),
        ("nobody", NOW + H, False, "deferred", NOW + H),
        ("nobody", None, True, "realtime", None),
        ("batch-plain", None, False, "deferred", NOW + 24 * H),
        ("batch-plain", NOW + H, False, "deferred", NOW + H),
        ("batch-plain", None, True, "realtime", None),
        ("batch-default", None, False, "deferred", NOW + 6 * H),
        ("batch-default", NOW + 48 * H, False, "deferred", NOW + 48 * H),
        ("batch-max", None, False, "deferred", NOW + 2 * H),
        ("batch-max", NOW + 5 * H, False, "deferred", NOW + 2 * H),
        ("batch-max", NOW + H, False, "deferred", NOW + H),
        ("auto-plain", None, False, "realtime", None),
        ("auto-plain", NOW + H, False, "deferred", NOW + H),
        ("auto-default", None, False, "deferred", NOW + 6 * H),
        ("auto-default", NOW + H, False, "deferred", NOW + H),
        ("auto-default", NOW + 24 * H, False, "deferred", NOW + 12 * H),
        ("auto-default", None, True, "realtime", None),
        ("realtime", None, False, "realtime", None),
        ("realtime", NOW + H, False, "realtime", None),
        ("forbid", None, False, "realtime", None),
        ("forbid", NOW + H, False, "realtime", None),
    ],
)
def test_decision_table(
    tmp_path: Path, tenant: str, header: float | None, urgent: bool, lane: str, deadline: float | None
) -> None:
    write_rules(tmp_path, "rules.yaml", RULES)
    decision = decide(load_policies(tmp_path), facts(tenant=tenant), header, urgent, NOW)
    assert (decision.mode, decision.deadline) == (lane, deadline)
    assert decision.rule == (None if tenant == "nobody" else tenant)


# --- the shipped rules -------------------------------------------------------------------------------------

MARKERS = {"x-workload", "workload"}
keys = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-_"), min_size=1, max_size=12).filter(
    lambda k: k not in MARKERS
)
values = st.text(max_size=20)
SHIPPED_POLICIES = load_policies(SHIPPED)


def test_shipped_rules_load() -> None:
    assert len(SHIPPED_POLICIES.rules) >= 5


@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"]),
    model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-5-nano", "claude-haiku-4-5", "text-embedding-3-small"]),
    tenant=st.sampled_from(["default", "research", "evals", "support"]),
    headers=st.dictionaries(keys, values, max_size=4),
    metadata=st.dictionaries(keys, values, max_size=4),
    user=st.none() | st.sampled_from(["batch-1", "alice"]),
)
def test_shipped_rules_never_defer_unmarked_calls(
    path: str, model: str, tenant: str, headers: dict[str, str], metadata: dict[str, str], user: str | None
) -> None:
    call = facts(path=path, model=model, tenant=tenant, headers=headers, metadata=metadata, user=user)
    assert decide(SHIPPED_POLICIES, call, None, False, NOW).mode == "realtime"


@pytest.mark.parametrize(
    ("call", "rule", "deadline"),
    [
        (facts(headers={"x-workload": "eval"}), "evals", NOW + 6 * H),
        (facts(path="/v1/embeddings", headers={"x-workload": "backfill"}), "embeddings-backfill", NOW + 24 * H),
        (facts(headers={"x-workload": "content"}), "content-generation", NOW + 4 * H),
        (facts(model="gpt-4o-mini", headers={"x-workload": "classification"}), "classification", NOW + 12 * H),
        (facts(metadata={"workload": "synthetic-data"}), "synthetic-data", NOW + 24 * H),
    ],
)
def test_shipped_rules_defer_marked_calls(call: Facts, rule: str, deadline: float) -> None:
    assert decide(SHIPPED_POLICIES, call, None, False, NOW) == Decision("deferred", deadline, rule)


def test_shipped_eval_reruns_use_the_answer_cache_now() -> None:
    decision = decide(SHIPPED_POLICIES, facts(headers={"x-workload": "eval-rerun"}), None, False, NOW)
    assert decision == Decision("realtime", None, "eval-reruns", answer_cache=True)


def test_shipped_interactive_rule_ignores_header() -> None:
    decision = decide(SHIPPED_POLICIES, facts(headers={"x-workload": "interactive"}), NOW + H, False, NOW)
    assert decision == Decision("realtime", None, "interactive-never-deferred")


# --- reloading ---------------------------------------------------------------------------------------------


def test_store_reload_keeps_old_rules_on_error(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "rules.yaml", "rules:\n  - name: first\n")
    store = PolicyStore(tmp_path)
    assert [r.name for r in store.current.rules] == ["first"]
    path.write_text("rules:\n  - name: second\n    lane: never\n", encoding="utf-8")
    errors = store.reload()
    assert len(errors) == 1
    assert "rules[0].lane" in errors[0]
    assert "second" in errors[0]
    assert [r.name for r in store.current.rules] == ["first"]
    path.write_text("rules:\n  - name: second\n", encoding="utf-8")
    assert store.reload() == []
    assert [r.name for r in store.current.rules] == ["second"]


def test_store_maybe_reload_only_on_change(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "10-a.yaml", "rules:\n  - name: a\n")
    store = PolicyStore(tmp_path)
    before = store.current
    assert store.maybe_reload() == []
    assert store.current is before

    path.write_text("rules:\n  - name: b\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # same size as before: only the mtime tells the change
    assert store.maybe_reload() == []
    assert [r.name for r in store.current.rules] == ["b"]

    write_rules(tmp_path, "20-broken.yaml", "rules: [\n")
    errors = store.maybe_reload()
    assert len(errors) == 1
    assert "20-broken.yaml" in errors[0]
    assert store.maybe_reload() == []  # the same broken state is reported once, not every second
    assert [r.name for r in store.current.rules] == ["b"]

    (tmp_path / "20-broken.yaml").unlink()
    write_rules(tmp_path, "notes.txt", "ignored")
    assert store.maybe_reload() == []
    assert [r.name for r in store.current.rules] == ["b"]


def test_store_starts_from_missing_directory(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "later")
    assert not store.current.rules
    write_rules(tmp_path / "later", "rules.yaml", "rules:\n  - name: late\n")
    assert store.maybe_reload() == []
    assert [r.name for r in store.current.rules] == ["late"]


def test_store_constructor_raises_on_broken_rules() -> None:
    with pytest.raises(ConfigError):
        PolicyStore(DATA / "policies_broken")


@pytest.mark.parametrize(
    ("body", "task", "route"),
    [
        ("    task: support-triage\n", "support-triage", None),
        ("    route: off\n", None, False),  # YAML reads a bare `off` as false: the same as 'off'
        ("    route: 'off'\n", None, "off"),
        ("    route: {mode: shadow, quality_target: 0.9}\n", None, RouteOverride(mode="shadow", quality_target=0.9)),
    ],
)
def test_a_rule_names_the_task_and_the_model_route_of_its_calls(
    tmp_path: Path, body: str, task: str | None, route: object
) -> None:
    policies = one_rule(tmp_path, "    match: {tenant: team-a}\n" + body)
    decision = decide(policies, Facts(path="/v1/chat/completions", model="gpt-4o", tenant="team-a"), None, False, 0)
    assert (decision.rule, decision.task, decision.route) == ("r", task, route)
    other = decide(policies, Facts(path="/v1/chat/completions", model="gpt-4o", tenant="team-b"), None, False, 0)
    assert (other.task, other.route) == (None, None)
