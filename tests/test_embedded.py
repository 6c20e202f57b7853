"""The bundled Redis lives and dies with the router, and runs once per data directory: real processes, real signals."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from router.core.errors import ConfigError
from router.ops.embedded import embedded_redis, redis_server_binary
from router.ops.serving import free_port
from tests.helpers.servers import Sim

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not LINUX, reason="reads processes from /proc")]


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    until = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > until:
            return False
        time.sleep(0.05)
    return True


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts: it runs nothing and holds no file)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def redis_servers_in(directory: Path) -> list[int]:
    """The pids of live redis-server processes working in `directory` (redis-server chdirs to its --dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "redis-server":
                continue
            if Path(os.readlink(entry / "cwd")) == directory.resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class Serve:
    """`python -m router serve` on the bundled Redis under `data`, as a subprocess."""

    def __init__(
        self, data: Path, upstream: str, log: Path, *, port: int | None = None, redis_url: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_") and k != "REDIS_URL"}
        env |= {"PYTHONPATH": str(ROOT), "HYBRID_ROUTER_DATA_DIR": str(data)}
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.pop("OPENAI_API_KEY", None)
        cmd = [sys.executable, "-m", "router", "serve", "--port", str(self.port), "--upstream-url", upstream]
        cmd += ["--batch-max-wait", "0.2", "--poll-interval", "0.2"]
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=out)

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_healthy(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"serve exited ({self.proc.returncode}): {self.stderr()}"
            try:
                return httpx.get(self.base + "/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 30), f"serve did not come up: {self.stderr()}"

    def exit_code(self) -> int:
        return self.proc.wait(30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Start `serve` processes; any still running at the end is stopped with SIGTERM (then SIGKILL)."""
    started: list[Serve] = []

    def start(data: Path, upstream: str = "http://127.0.0.1:9/v1", **kw: Any) -> Serve:
        started.append(Serve(data, upstream, tmp_path / f"serve-{len(started)}.log", **kw))
        return started[-1]

    yield start
    for s in reversed(started):
        if s.proc.poll() is None:
            s.proc.terminate()
            try:
                s.proc.wait(30)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()


# uvicorn ends a SIGINT as a normal exit; SIGTERM is re-raised after its shutdown and ends as SystemExit(143)
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 0, signal.SIGKILL: -signal.SIGKILL}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_no_redis_survives_the_router_and_no_data_is_lost(
    tmp_path: Path, serve: Callable[..., Serve], sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    first = serve(data)
    first.wait_healthy()
    [redis_pid] = redis_servers_in(data / "redis")
    sock = data / "redis" / "redis.sock"
    with redis.Redis(unix_socket_path=str(sock)) as client:
        client.set("written-before", "the signal")

    first.proc.send_signal(sig)
    assert first.exit_code() == EXIT_CODES[sig], first.stderr()
    assert wait_for(lambda: gone(redis_pid)), f"redis-server {redis_pid} outlived serve after {sig.name}"
    assert not sock.exists()  # Redis shut down on its own terms (it removes its socket), even after SIGKILL
    assert "Traceback" not in first.stderr()

    second = serve(data)
    second.wait_healthy()
    with redis.Redis(unix_socket_path=str(sock)) as client:
        assert client.get("written-before") == b"the signal"
    if sig == signal.SIGKILL:
        assert f"hybrid-router pid {first.proc.pid} did not stop its bundled Redis cleanly" in second.stderr()
    second.proc.send_signal(signal.SIGTERM)
    assert second.exit_code() == 143
    assert redis_servers_in(data / "redis") == []


def test_a_result_stored_through_the_router_survives_a_clean_restart(
    tmp_path: Path, serve: Callable[..., Serve], sim: Sim
) -> None:
    data = tmp_path / "data"
    first = serve(data, sim.v1)
    first.wait_healthy()
    with openai.OpenAI(base_url=first.base + "/v1", api_key="dev", max_retries=0, timeout=30) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Keep this."}],
            extra_headers={"X-Deadline": "2h"},
        )
    assert raw.headers["x-router-lane"] == "batch"
    answer = raw.parse().choices[0].message.content
    call_id = raw.headers["x-router-request-id"]
    first.proc.send_signal(signal.SIGTERM)
    assert first.exit_code() == 143

    second = serve(data, sim.v1)
    second.wait_healthy()
    stored = httpx.get(f"{second.base}/v1/deferred/{call_id}", timeout=10)
    assert stored.status_code == 200
    assert stored.json()["choices"][0]["message"]["content"] == answer


def test_a_second_serve_on_the_same_data_dir_is_refused_and_told_how_to_share(
    tmp_path: Path, serve: Callable[..., Serve]
) -> None:
    data = tmp_path / "data"
    first = serve(data)
    first.wait_healthy()
    [redis_pid] = redis_servers_in(data / "redis")

    second = serve(data)
    assert second.exit_code() == 2
    message = second.stderr()
    assert message.startswith(f"error: {(data / 'redis').resolve()}: in use by hybrid-router (pid {first.proc.pid})")
    assert f"redis-server (pid {redis_pid})" in message
    assert "Traceback" not in message
    assert redis_servers_in(data / "redis") == [redis_pid]  # no second Redis on these files
    assert httpx.get(first.base + "/healthz").status_code == 200

    shared = re.search(r"REDIS_URL=(unix://[^\s,;]+)", message)
    assert shared, message
    sharing = serve(data, redis_url=shared.group(1))
    sharing.wait_healthy()
    assert httpx.get(sharing.base + "/readyz").json()["checks"]["redis"] is True
    assert redis_servers_in(data / "redis") == [redis_pid]


def test_a_failed_start_leaves_no_redis(tmp_path: Path, serve: Callable[..., Serve]) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:  # Redis starts, then uvicorn cannot bind
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        router = serve(data, port=taken.getsockname()[1])
        assert router.exit_code() != 0
    assert "address already in use" in router.stderr()
    assert (data / "redis" / "lock").read_text() == ""  # the bundled Redis was started, and stopped cleanly
    assert redis_servers_in(data / "redis") == []


def test_an_exception_inside_stops_the_child_cleanly(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), embedded_redis(tmp_path):
        [redis_pid] = redis_servers_in(tmp_path / "redis")
        _ = 1 / 0
    assert gone(redis_pid)
    assert not (tmp_path / "redis" / "redis.sock").exists()  # Redis shut down on its own terms: it removed its socket
    assert (tmp_path / "redis" / "lock").read_text() == ""


def test_a_stale_socket_and_record_left_by_a_crash_are_cleaned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file nobody listens on, as a crash leaves it
        dead.bind(str(directory / "redis.sock"))
    dead_pid = _dead_pid()
    record = f'{{"pid":{dead_pid},"redis_pid":{dead_pid},"url":"unix://{directory}/redis.sock"}}'
    (directory / "lock").write_text(record)

    with embedded_redis(tmp_path) as url, redis.Redis.from_url(url) as client:
        assert client.ping()
        assert f'"pid":{os.getpid()}' in (directory / "lock").read_text()
    assert f"hybrid-router pid {dead_pid} did not stop its bundled Redis cleanly" in caplog.text
    assert "removed the stale socket" in caplog.text
    assert (directory / "lock").read_text() == ""  # a clean stop leaves no record
    assert redis_servers_in(directory) == []


def test_a_redis_we_did_not_start_on_the_socket_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    sock = directory / "redis.sock"
    args = [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(directory)]
    foreign = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(sock.exists)
        with pytest.raises(ConfigError) as info, embedded_redis(tmp_path):
            pass
        assert f"a redis-server this router did not start (pid {foreign.pid}) serves unix://{sock}" in str(info.value)
        assert redis_servers_in(directory) == [foreign.pid]
    finally:
        foreign.terminate()
        foreign.wait(10)


def test_one_process_cannot_start_two_redis_on_one_directory(tmp_path: Path) -> None:
    with embedded_redis(tmp_path) as url:
        with pytest.raises(ConfigError) as info, embedded_redis(tmp_path):
            pass
        assert f"in use by hybrid-router (pid {os.getpid()})" in str(info.value)
        assert f"REDIS_URL={url}" in str(info.value)
        with redis.Redis.from_url(url) as client:
            assert client.ping()  # the refused start did not touch the running one


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, ('{"pid":%s,"redis_pid":%d,"url":"unix:///x"}' % (sys.argv[2], os.getpid())).encode())
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def _holder(directory: Path, router_pid: int, seconds: float) -> subprocess.Popen[str]:
    """A process that holds the lock as an orphaned redis-server would (its router `router_pid` gone)."""
    directory.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", HOLDER, str(directory / "lock"), str(router_pid), str(seconds)]
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_an_orphaned_redis_that_is_stopping_is_waited_for(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "redis", _dead_pid(), 1.0)
    try:
        with embedded_redis(tmp_path) as url, redis.Redis.from_url(url) as client:
            assert client.ping()
            assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_an_orphaned_redis_that_stays_is_named(tmp_path: Path) -> None:
    dead = _dead_pid()
    holder = _holder(tmp_path / "redis", dead, 60.0)
    try:
        with pytest.raises(ConfigError) as info, embedded_redis(tmp_path):
            pass
        assert f"bundled redis-server (pid {holder.pid}) whose router (pid {dead}) is gone" in str(info.value)
        assert f"kill {holder.pid}" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_the_lock_is_held_by_the_redis_child_too(tmp_path: Path) -> None:
    with embedded_redis(tmp_path):
        [redis_pid] = redis_servers_in(tmp_path / "redis")
        held = {os.readlink(f"/proc/{redis_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{redis_pid}/fd")}
        assert str((tmp_path / "redis" / "lock").resolve()) in held
        fd = os.open(tmp_path / "redis" / "lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


LEAKY = """
import subprocess


def test_leaks_a_child_and_an_orphan() -> None:
    subprocess.Popen(["sleep", "301"])
    subprocess.run(["sh", "-c", "sleep 302 &"], check=True)
"""


def test_the_suite_fails_when_a_test_leaks_a_process(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "tmp")]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([*argv, "test_leaky.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed, 1 error" in done.stdout
    assert "processes started by tests were still running (now killed)" in done.stdout
    # The summary line repeats the message when the terminal is wide enough, so count distinct pids.
    leaked = {int(pid) for pid in re.findall(r"(\d+): 'sleep 30[12]'", done.stdout)}
    assert len(leaked) == 2, done.stdout
    assert all(gone(pid) for pid in leaked)
