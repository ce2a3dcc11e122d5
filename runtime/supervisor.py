"""`make run`: the whole platform in the foreground, supervised.

Order: check configuration → take the var/ lock → check the port → hold (or reach) PostgreSQL and
Redis → bootstrap (migrate, default team, admin) → start the children (web, worker, beat) → watch them. A child that
dies is restarted with backoff; one that keeps dying stops the whole stack loudly, so the platform
never runs half up. SIGINT or SIGTERM stops every child's process group, then the embedded servers.

With no XINFERENCE_ENDPOINT, the embedded Xinference is one more child (`child_specs`); its
models are registered by bootstrap and launched, then kept running, by the reconcile task.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from chatplatform.checks import is_placeholder
from models_registry import embedded_xinference
from runtime import embedded
from runtime.service_urls import parse_database_url, parse_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 15.0
MAX_RESTARTS = 5  # within RESTART_WINDOW_S, after which the stack stops
RESTART_WINDOW_S = 120.0
READY_TIMEOUT_S = 600.0
WEB_DATABASE_POOL_DEFAULT = 20  # connections per web process (DATABASE_POOL_MAX_SIZE)
# How long uvicorn keeps an idle connection open: longer than clients and proxies keep theirs
# (httpx 5 s, nginx 60 s, cloud load balancers 60 s), so the client always closes first. At
# uvicorn's default of 5 s a client reusing a connection just as the server closed it got a
# reset (make bench-serving's load run: 2 of 2,359 requests).
WEB_KEEP_ALIVE_S = 75


class StartupError(Exception):
    """A problem the operator must fix; printed as one line before exiting non-zero."""


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    restarts: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    var_dir: Path
    host: str
    port: int
    # None when XINFERENCE_ENDPOINT names an external server; else the embedded one's port.
    xinference_port: int | None
    # uvicorn processes (WEB_CONCURRENCY, default one per core): a request's Python runs on one core.
    web_workers: int = 1
    # Database connections each web process may hold at once (DATABASE_POOL_MAX_SIZE).
    web_database_pool: int = WEB_DATABASE_POOL_DEFAULT


def log(message: str) -> None:
    print(f"[supervisor] {message}", file=sys.stderr, flush=True)


def read_config(environ: dict[str, str]) -> Config:
    var_dir = embedded.var_dir_of(environ)
    port = read_port(environ, "PORT", "8000")
    xinference_port = None if environ.get("XINFERENCE_ENDPOINT") else read_port(environ, "XINFERENCE_PORT", "9997")
    try:
        if environ.get("DATABASE_URL"):
            database_password = parse_database_url(environ["DATABASE_URL"]).get("PASSWORD") or ""
            if is_placeholder(str(database_password)):
                raise StartupError(
                    "DATABASE_URL's password is the placeholder from docker/.env.example: set a real one"
                )
        if environ.get("REDIS_URL"):
            parse_redis_url(environ["REDIS_URL"])
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    # A value copied from docker/.env.example is never right, wherever the platform runs.
    for name in ("SECRET_KEY", "CHATPLATFORM_ADMIN_PASSWORD"):
        if is_placeholder(environ.get(name, "")):
            raise StartupError(
                f"{name} is the placeholder {environ[name]!r} from docker/.env.example: set a real value"
            )
    return Config(
        var_dir=var_dir,
        host=environ.get("HOST") or "127.0.0.1",
        port=port,
        xinference_port=xinference_port,
        web_workers=read_number(environ, "WEB_CONCURRENCY", str(os.cpu_count() or 1), maximum=1000),
        web_database_pool=read_number(environ, "DATABASE_POOL_MAX_SIZE", str(WEB_DATABASE_POOL_DEFAULT), maximum=1000),
    )


def read_port(environ: dict[str, str], name: str, default: str) -> int:
    return read_number(environ, name, default, maximum=65535)


def read_number(environ: dict[str, str], name: str, default: str, *, maximum: int) -> int:
    text = environ.get(name) or default
    if not text.isdigit() or not 0 < int(text) <= maximum:
        raise StartupError(f"{name} must be a number from 1 to {maximum}, got {text!r}")
    return int(text)


@contextlib.contextmanager
def single_instance(var_dir: Path) -> Iterator[None]:
    """Hold var/run/platform.lock for the life of the platform; a second start is refused."""
    run_dir = var_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / "platform.lock"
    with open(lock_path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            raise StartupError(
                f"chatplatform is already running on {var_dir} (supervisor pid {holder}): stop it first"
            ) from None
        lock_file.truncate(0)
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        yield


def check_port_free(host: str, port: int, variable: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise StartupError(f"port {port} on {host} is taken: stop what uses it or set {variable}") from None


def embedded_xinference_env(config: Config) -> dict[str, str]:
    """Installs the embedded Xinference's environment on first use; the variables the platform's
    processes need to find it. Empty when XINFERENCE_ENDPOINT names an external server."""
    if config.xinference_port is None:
        return {}
    venv_dir = embedded_xinference.default_venv_dir()
    if not embedded_xinference.venv_is_ready(venv_dir):
        log(f"installing the embedded Xinference into {venv_dir} (once; about 3 minutes, 2 GB)")
        try:
            embedded_xinference.ensure_venv(venv_dir)
        except subprocess.CalledProcessError as exc:
            raise StartupError(
                f"installing Xinference failed ({exc}); set XINFERENCE_ENDPOINT to use a running one"
            ) from None
    return {
        "XINFERENCE_ENDPOINT": f"http://127.0.0.1:{config.xinference_port}",
        "XINFERENCE_EMBEDDED_VENV": str(venv_dir),
    }


def resolve_services(config: Config, environ: dict[str, str]) -> dict[str, str]:
    """DATABASE_URL and REDIS_URL for the children: the configured servers, checked, or the embedded ones."""
    database_url = environ.get("DATABASE_URL") or embedded.postgres_url(config.var_dir)
    redis_url = environ.get("REDIS_URL") or embedded.redis_url(config.var_dir)
    database = parse_database_url(database_url)
    try:
        psycopg.connect(
            host=database["HOST"],
            port=database.get("PORT") or None,
            user=database.get("USER") or None,
            password=database.get("PASSWORD") or None,
            dbname=database["NAME"],
            connect_timeout=5,
        ).close()
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"DATABASE_URL: cannot connect to PostgreSQL: {first_line}") from None
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise StartupError(f"REDIS_URL: cannot reach Redis: {exc}") from None
    finally:
        client.close()
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}


def child_specs(config: Config) -> list[ChildSpec]:
    python = sys.executable
    specs = [
        ChildSpec(
            "web",
            [
                python,
                "-m",
                "uvicorn",
                "chatplatform.asgi:application",
                "--host",
                config.host,
                "--port",
                str(config.port),
                "--lifespan",
                "off",
                "--workers",
                str(config.web_workers),
                "--timeout-keep-alive",
                str(WEB_KEEP_ALIVE_S),
            ],
            {"DATABASE_POOL_MAX_SIZE": str(config.web_database_pool)},
        ),
        # Two workers, so ingestion never takes the slots chat needs (summaries, titles).
        ChildSpec(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-Q",
                "llm,default",
                "--concurrency",
                os.environ.get("WORKER_CONCURRENCY", "2"),
                "-n",
                "worker@%h",
                "-l",
                "info",
                "--without-mingle",
                "--without-gossip",
            ],
        ),
        ChildSpec(
            "worker-ingest",
            [
                python,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-Q",
                "ingest",
                "--concurrency",
                os.environ.get("INGEST_CONCURRENCY", "2"),
                "-n",
                "ingest@%h",
                "-l",
                "info",
                "--without-mingle",
                "--without-gossip",
            ],
        ),
        ChildSpec(
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "workers",
                "beat",
                "-l",
                "info",
                "--schedule",
                str(config.var_dir / "celerybeat-schedule"),
            ],
        ),
    ]
    if config.xinference_port is not None:
        venv_dir = embedded_xinference.default_venv_dir()
        home = config.var_dir / "xinference"
        home.mkdir(parents=True, exist_ok=True)
        specs.append(
            ChildSpec(
                "xinference",
                embedded_xinference.server_command(venv_dir, host="127.0.0.1", port=config.xinference_port),
                embedded_xinference.server_env(home),
            )
        )
    return specs


def run_once(argv: list[str], env: dict[str, str]) -> None:
    """A setup step (migrate, bootstrap); its failure stops the start."""
    completed = subprocess.run(argv, env=env, cwd=BASE_DIR, check=False)
    if completed.returncode != 0:
        raise StartupError(f"`{' '.join(argv[1:])}` failed with exit code {completed.returncode}")


def spawn(spec: ChildSpec, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Each child leads its own process group, so stopping it also stops what it forked
    # (Celery's pool processes), and a Ctrl-C reaches children only through the supervisor.
    return subprocess.Popen(spec.argv, env={**env, **spec.extra_env}, cwd=BASE_DIR, start_new_session=True)


def stop_children(children: list[Child]) -> None:
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{child.spec.name} did not stop in {STOP_GRACE_S:.0f}s; killing it")
        # Whatever is left in the group (a pool process that ignored SIGTERM) is killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)


def announce_when_ready(config: Config, started: float) -> bool:
    url = f"http://{config.host}:{config.port}/healthz"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
        if response.status == 200:
            log(
                f"chatplatform is up in {time.monotonic() - started:.1f}s on http://{config.host}:{config.port}/ "
                "(console /admin/, API docs /api/docs/); Ctrl-C stops it"
            )
            return True
    return False


class StopRequested(Exception):
    pass


def raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def supervise(children: list[Child], env: dict[str, str], config: Config, started: float) -> int:
    embedded_servers = []
    if "DATABASE_URL" not in os.environ:
        embedded_servers.append(embedded.embedded_postgres(config.var_dir))
    if "REDIS_URL" not in os.environ:
        embedded_servers.append(embedded.embedded_redis(config.var_dir))
    ready = False
    last_server_check = 0.0
    while True:
        time.sleep(0.5)
        if not ready and time.monotonic() - started < READY_TIMEOUT_S:
            ready = announce_when_ready(config, started)
        if time.monotonic() - last_server_check > 2.0:
            last_server_check = time.monotonic()
            for server in embedded_servers:
                if server.restart_if_down():
                    log(f"embedded {server.name} had stopped; started it again")
        for child in children:
            code = child.process.poll()
            if code is None:
                continue
            # What the dead child leaves in its process group (uvicorn's worker processes, Celery's
            # pool) would hold its port or its tasks beside the new one.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            now = time.monotonic()
            child.restarts = [moment for moment in child.restarts if now - moment < RESTART_WINDOW_S]
            if len(child.restarts) >= MAX_RESTARTS:
                log(f"{child.spec.name} keeps exiting (code {code}, {MAX_RESTARTS} restarts); stopping")
                return 1
            delay = 2 ** len(child.restarts) * 0.5
            log(f"{child.spec.name} exited with code {code}; restarting in {delay:.1f}s")
            time.sleep(delay)
            child.restarts.append(time.monotonic())
            child.process = spawn(child.spec, env)


def main() -> int:
    started = time.monotonic()
    signal.signal(signal.SIGTERM, raise_stop)
    signal.signal(signal.SIGINT, raise_stop)
    children: list[Child] = []
    try:
        config = read_config(dict(os.environ))
        with single_instance(config.var_dir):
            check_port_free(config.host, config.port, "PORT")
            if config.xinference_port is not None:
                check_port_free("127.0.0.1", config.xinference_port, "XINFERENCE_PORT")
            env = {**os.environ, **resolve_services(config, dict(os.environ)), **embedded_xinference_env(config)}
            env["CHATPLATFORM_VAR_DIR"] = str(config.var_dir)
            # Only the web processes pool their connections (child_specs gives them the size).
            env.pop("DATABASE_POOL_MAX_SIZE", None)
            env.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")
            run_once([sys.executable, "manage.py", "bootstrap"], env)
            for spec in child_specs(config):
                children.append(Child(spec, spawn(spec, env)))
            return supervise(children, env, config, started)
    except StartupError as exc:
        log(f"error: {exc}")
        return 2
    except StopRequested as stop:
        log(f"{stop} received; stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_children(children)
        # The embedded servers stop through their holder list as this process exits (atexit).


if __name__ == "__main__":
    sys.exit(main())
