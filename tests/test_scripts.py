"""The Lua scripts agree with their Python side: every state literal is a member of `router.states`, and every
script reads as many KEYS and ARGV as its callers pass (read from the source, so a new argument on one side only
fails here rather than as a wrong field in Redis)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from router import scripts
from router.states import BatchState, CallState

ROOT = Path(__file__).resolve().parent.parent / "router"
SCRIPTS = {name: text for name, text in vars(scripts).items() if name.isupper() and isinstance(text, str)}
STATES = {s.value for s in CallState} | {s.value for s in BatchState}

# The `state` field written or compared on a hash: HSET key, ..., 'state', 'x' / HGET key, 'state') ~= 'x'.
_SET = re.compile(r"redis\.call\('HSET', (?P<key>[^,]+),[^)]*?'state', '(?P<value>\w+)'")
_CMP = re.compile(r"redis\.call\('HGET', (?P<key>[^,]+), 'state'\) [~=]= '(?P<value>\w+)'")
_LOCAL = re.compile(r"local state = redis\.call\('HGET', (?P<key>[^,]+), 'state'\)")
_LOCAL_CMP = re.compile(r"(?<!')\bstate [~=]= '(\w+)'")
_ANY_STATE = re.compile("'(" + "|".join(sorted(STATES)) + ")'")


def _kind(key: str) -> str:
    """Which hash a key expression names: a call's (`call`, `call_prefix .. id`, `other`) or a batch's."""
    return "batch" if "batch" in key else "call"


def _state_literals(text: str) -> list[tuple[str, str]]:
    """(hash kind, literal) for every state a script writes or compares."""
    found = [(_kind(m["key"]), m["value"]) for pattern in (_SET, _CMP) for m in pattern.finditer(text)]
    local = _LOCAL.findall(text)
    compared = _LOCAL_CMP.findall(text)
    if compared:
        assert len(local) == 1, "a bare `state` compared without one `local state = HGET ...` to say whose"
        found += [(_kind(local[0]), value) for value in compared]
    return found


def _lua_states() -> dict[str, set[str]]:
    by_kind: dict[str, set[str]] = {"call": set(), "batch": set()}
    for text in SCRIPTS.values():
        for kind, value in _state_literals(text):
            by_kind[kind].add(value)
    return by_kind


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_state_literal_is_a_member(name: str) -> None:
    text = SCRIPTS[name]
    literals = _state_literals(text)
    for kind, value in literals:
        members = {s.value for s in (CallState if kind == "call" else BatchState)}
        assert value in members, f"{name}: {kind} state {value!r} is not a member of the enum"
    # No state literal in a place the patterns above do not read (it would escape the check).
    assert len(_ANY_STATE.findall(text)) == len(literals), name


def test_the_enums_hold_what_the_scripts_use() -> None:
    lua = _lua_states()
    assert lua["call"] == {s.value for s in CallState}
    # `ingested` is written by Python alone (`Accumulator.ingested`), after the scripts are done with a batch.
    assert lua["batch"] == {s.value for s in BatchState} - {BatchState.INGESTED}


def test_the_patterns_see_a_wrong_literal() -> None:
    wrong = "if redis.call('HGET', batch, 'state') ~= 'bulding' then return 0 end"
    assert _state_literals(wrong) == [("batch", "bulding")]


# --- arity -----------------------------------------------------------------------------------------------------


def _lua_arity(text: str, table: str) -> tuple[int, bool]:
    """The highest literal index a script reads of KEYS or ARGV, and whether it reads more (`#ARGV`, `ARGV[i]`)."""
    fixed = [int(i) for i in re.findall(rf"\b{table}\[(\d+)\]", text)]
    variadic = bool(re.search(rf"#{table}\b|unpack\({table}\b|\b{table}\[[^\]\d]", text))
    return max(fixed, default=0), variadic


def _targets(assign: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return assign.targets if isinstance(assign, ast.Assign) else [assign.target]


def _list_count(node: ast.expr, function: ast.AST) -> tuple[int, bool]:
    """How many items a `keys=` / `args=` argument passes: (items counted, whether more may follow)."""
    if isinstance(node, ast.Name):
        assigned = [
            a.value
            for a in ast.walk(function)
            if isinstance(a, ast.Assign | ast.AnnAssign)
            and any(isinstance(t, ast.Name) and t.id == node.id for t in _targets(a))
        ]
        grown = any(
            isinstance(a, ast.AugAssign) and isinstance(a.target, ast.Name) and a.target.id == node.id
            for a in ast.walk(function)
        )
        assert len(assigned) == 1, f"{node.id} is assigned {len(assigned)} times"
        value = assigned[0]
        assert value is not None
        count, more = _list_count(value, function)
        return count, more or grown
    if isinstance(node, ast.List):
        starred = [e for e in node.elts if isinstance(e, ast.Starred)]
        return len(node.elts) - len(starred), bool(starred)
    return 0, True  # a comprehension or another expression: any length


def _calls() -> list[tuple[str, str, str, ast.Call, ast.AST]]:
    """(module, script name, attribute, call, enclosing function) for every call of a registered script."""
    found: list[tuple[str, str, str, ast.Call, ast.AST]] = []
    for path in sorted(ROOT.glob("*.py")):
        tree = ast.parse(path.read_text())
        registered: dict[str, str] = {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "register_script"
            ):
                target, script = node.targets[0], node.value.args[0]
                name = script.attr if isinstance(script, ast.Attribute) else script.id  # type: ignore[attr-defined]
                assert isinstance(target, ast.Attribute)
                registered[target.attr] = name
        for function in ast.walk(tree):
            if not isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in registered
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "self"
                ):
                    found.append((path.name, registered[node.func.attr], node.func.attr, node, function))
    return found


CALLS = _calls()


def test_every_script_is_called() -> None:
    assert {name for _, name, *_ in CALLS} == set(SCRIPTS)


@pytest.mark.parametrize(
    ("module", "name", "call", "function"),
    [(m, n, c, f) for m, n, _, c, f in CALLS],
    ids=[f"{m}:{n}" for m, n, *_ in CALLS],
)
def test_a_script_reads_what_its_caller_passes(module: str, name: str, call: ast.Call, function: ast.AST) -> None:
    passed = {kw.arg: kw.value for kw in call.keywords}
    assert set(passed) == {"keys", "args"}, f"{module}: call {name} with keys= and args="
    for table, arg in (("KEYS", "keys"), ("ARGV", "args")):
        read, reads_more = _lua_arity(SCRIPTS[name], table)
        given, gives_more = _list_count(passed[arg], function)
        if gives_more:
            assert reads_more, f"{module}: {name} reads {read} {table} but may be given more"
            assert given >= read, f"{module}: {name} reads {table}[{read}] but is given at least {given}"
        elif reads_more:
            assert given >= read, f"{module}: {name} reads {table}[{read}] but is given {given}"
        else:
            assert given == read, f"{module}: {name} reads {read} {table} but is given {given}"


def test_the_arity_reader_counts() -> None:
    assert _lua_arity(scripts.STORE_RESULT, "KEYS") == (6, False)
    assert _lua_arity(scripts.STORE_RESULT, "ARGV") == (11, False)
    assert _lua_arity(scripts.PRUNE, "KEYS") == (2, True)
    assert _lua_arity(scripts.NATIVE_RECORD, "ARGV") == (4, True)
