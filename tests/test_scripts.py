"""The Lua scripts agree with their Python side: every state literal is a member of `router.core.states`, and
each script's typed wrapper in `router/deferred/store/scripts.py` names exactly the KEYS and ARGV its Lua reads, in
the Lua's order and by the Lua's own names (read from the source, so a new argument on one side only fails here
rather than as a wrong field in Redis); every key one call passes lies in one Redis Cluster slot."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from router.core.keys import Keys
from router.core.states import BatchState, CallState, EnqueueOutcome
from router.deferred.store import scripts

ROOT = Path(__file__).resolve().parent.parent / "router"
SCRIPTS = {name: text for name, text in vars(scripts).items() if name.isupper() and isinstance(text, str)}
WRAPPERS: list[type[scripts.Script]] = [
    w
    for w in vars(scripts).values()
    if isinstance(w, type) and issubclass(w, scripts.Script) and w is not scripts.Script
]
WRAPPER = {name: w for w in WRAPPERS for name, text in SCRIPTS.items() if w.LUA is text}
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
    # `ingested` is written by Python alone (`BatchStore.finish_batch`), after the scripts are done with a batch.
    assert lua["batch"] == {s.value for s in BatchState} - {BatchState.INGESTED}


def test_the_patterns_see_a_wrong_literal() -> None:
    wrong = "if redis.call('HGET', batch, 'state') ~= 'bulding' then return 0 end"
    assert _state_literals(wrong) == [("batch", "bulding")]


# --- arity and names ---------------------------------------------------------------------------------------


def _lua_arity(text: str, table: str) -> tuple[int, bool]:
    """The highest literal index a script reads of KEYS or ARGV, and whether it reads more (`#ARGV`, `ARGV[i]`)."""
    fixed = [int(i) for i in re.findall(rf"\b{table}\[(\d+)\]", text)]
    variadic = bool(re.search(rf"#{table}\b|unpack\({table}\b|\b{table}\[[^\]\d]", text))
    return max(fixed, default=0), variadic


_LOCALS = re.compile(r"^local ([\w, ]+) = (.+)$", re.M)
_SLOT = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def _lua_locals(text: str) -> dict[tuple[str, int], str]:
    """The local name each KEYS[i] / ARGV[i] is bound to (`local a, b = KEYS[1], tonumber(ARGV[1])`)."""
    joined = re.sub(r",\n\s+", ", ", text)  # a `local` list continued on the next line
    bound: dict[tuple[str, int], str] = {}
    for names, values in _LOCALS.findall(joined):
        pairs = list(zip(names.split(", "), values.split(", "), strict=False))
        if len(names.split(", ")) != len(values.split(", ")):
            continue  # `local ids = redis.call(...)`: no KEYS or ARGV bound here
        for name, value in pairs:
            found = _SLOT.findall(value)
            if len(found) == 1:
                table, index = found[0]
                assert (table, int(index)) not in bound, f"{table}[{index}] bound twice"
                bound[table, int(index)] = name
    return bound


def test_every_script_has_one_wrapper() -> None:
    assert sorted(WRAPPER) == sorted(SCRIPTS)
    assert len(WRAPPERS) == len(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_wrapper_names_what_its_script_reads(name: str) -> None:
    wrapper, text = WRAPPER[name], SCRIPTS[name]
    bound = _lua_locals(text)
    for table, declared, more in (("KEYS", wrapper.KEYS, wrapper.MORE_KEYS), ("ARGV", wrapper.ARGV, wrapper.MORE_ARGV)):
        read, reads_more = _lua_arity(text, table)
        assert len(declared) == read, f"{name} reads {table}[{read}] but {wrapper.__name__} names {len(declared)}"
        assert more == reads_more, f"{name}: {wrapper.__name__}.MORE_{table} should be {reads_more}"
        for index in range(1, read + 1):
            assert (table, index) in bound, f"{name}: bind {table}[{index}] to a local, so its name is checked"
            assert declared[index - 1] == bound[table, index], f"{name}: {table}[{index}] is {bound[table, index]}"
    assert not set(wrapper.KEYS) & set(wrapper.ARGV), f"{name}: a name is both a key and an argument"


def test_the_arity_reader_counts() -> None:
    assert _lua_arity(scripts.STORE_RESULT, "KEYS") == (6, False)
    assert _lua_arity(scripts.STORE_RESULT, "ARGV") == (13, False)
    assert _lua_arity(scripts.PRUNE, "KEYS") == (2, True)
    assert _lua_arity(scripts.NATIVE_RECORD, "ARGV") == (4, True)


def test_the_locals_reader_names() -> None:
    enqueue = _lua_locals(scripts.ENQUEUE)
    assert enqueue["KEYS", 7] == "digests"  # continued on the next line
    assert enqueue["ARGV", 17] == "attach_only"  # `ARGV[17] == '1'`
    assert _lua_locals(scripts.CLAIM)["ARGV", 1] == "max_n"  # `tonumber(ARGV[1])`


def test_enqueue_answers_the_outcomes_of_the_enum() -> None:
    returned = set(re.findall(r"return \{'(\w+)'", scripts.ENQUEUE))
    assert returned == {o.value for o in EnqueueOutcome}


def test_only_the_wrappers_register_scripts() -> None:
    outside = [
        path.relative_to(ROOT).as_posix()
        for path in sorted(ROOT.rglob("*.py"))
        if "register_script" in path.read_text() and path.name != "scripts.py"
    ]
    assert outside == []


def test_scripts_holds_every_wrapper() -> None:
    held = {type(w) for w in vars(scripts.Scripts(_Stub(), Keys("p"))).values()}  # type: ignore[arg-type]
    assert held == set(WRAPPERS)


# --- what a wrapper passes ------------------------------------------------------------------------------------

TAG = "abcdefghij"
CALL_ID = f"{TAG}_call"


class _Sent(Exception):
    """Raised by the stub in place of Redis's answer: what was sent is all a test here looks at."""


class _Stub:
    """A client whose scripts record the KEYS and ARGV they are run with."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[Any], list[Any]]] = []

    def register_script(self, lua: str) -> Any:
        async def run(*, keys: list[Any], args: list[Any]) -> Any:
            self.sent.append((keys, args))
            raise _Sent()

        return run


def _value(name: str, annotation: str) -> Any:
    """A plausible value for a wrapper's parameter, by its name and annotation."""
    if name == "tag":
        return TAG
    if name == "call_id":
        return CALL_ID
    examples: dict[str, Any] = {
        "str": "x",
        "str | None": "x",
        "int": 1,
        "float": 1.5,
        "bool": True,
        "bytes": b"x",
        "tuple[float, float, float] | None": (1.0, 0.5, 0.5),
        "Mapping[str, str | bytes]": {"field": "value"},
        "Sequence[tuple[str, tuple[float, float, float] | None, float]]": [
            ("a", (1.0, 0.5, 0.5), 0.1),
            ("b", None, 0.0),
        ],
    }
    return examples[annotation]


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=[w.__name__ for w in WRAPPERS])
async def test_a_wrapper_passes_every_key_and_argument_in_one_slot(wrapper: type[scripts.Script]) -> None:
    stub = _Stub()
    script: Any = wrapper(stub, Keys("p"))  # type: ignore[arg-type]
    parameters = inspect.signature(script).parameters.values()
    with pytest.raises(_Sent):
        await script(**{p.name: _value(p.name, str(p.annotation)) for p in parameters})
    [(keys, args)] = stub.sent
    assert len(keys) >= len(wrapper.KEYS) and len(args) >= len(wrapper.ARGV)
    assert len(keys) == len(wrapper.KEYS) or wrapper.MORE_KEYS
    assert len(args) == len(wrapper.ARGV) or wrapper.MORE_ARGV
    assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    assert all(isinstance(a, str | bytes | int | float) and not isinstance(a, bool) for a in args), args


async def test_a_wrapper_refuses_a_missing_name() -> None:
    script = scripts.Cut(_Stub(), Keys("p"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Cut takes"):
        await script._run(batch="k", batches="k", bid="b")
