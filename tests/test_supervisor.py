"""`make run` for real: the embedded stack (PostgreSQL, Redis, web, worker, beat, Xinference with
its two offline models) comes up healthy, refuses a second start and a taken port, restarts a
killed child, heals a killed Xinference process group without a person, and Ctrl-C (SIGINT to
the process group) or SIGTERM leaves no process behind."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 420  # a first start launches both models after Xinference is up
# The details of /healthz (model uids) need it; the supervisor itself polls anonymously.
HEALTHZ_TOKEN = "healthz-token-for-the-supervisor-tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# The test process's own services: the platform under test finds (or starts) its own.
PARENT_ONLY_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_EMBEDDED",
    "REDIS_URL",
    "REDIS_EMBEDDED",
    "XINFERENCE_ENDPOINT",
    "XINFERENCE_EMBEDDED_VENV",
)


def platform_env(var_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in PARENT_ONLY_VARIABLES}
    env.update(
        {
            "CHATPLATFORM_VAR_DIR": str(var_dir),
            "PORT": str(port),
            "XINFERENCE_PORT": str(free_port()),
            "WORKER_CONCURRENCY": "2",
            "MODELS_RECONCILE_INTERVAL_S": "5",
            "HEALTHZ_TOKEN": HEALTHZ_TOKEN,
        },
        **extra,
    )
    return env


def healthz(port: int, *, details: bool = True) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {HEALTHZ_TOKEN}"} if details else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # http://127.0.0.1 only
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_healthy(port: int, timeout: float = START_TIMEOUT_S, *, components: set[str] | None = None) -> dict:
    """Until /healthz answers 200; with `components`, until those are ok whatever the others say
    (the models may still be launching)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = healthz(port)
            if components is None and status == 200:
                return body
            if components is not None and all(
                body["components"].get(name, {}).get("status") == "ok" for name in components
            ):
                return body
            last = body
        except OSError as error:
            last = error
        time.sleep(0.5)
    raise AssertionError(f"/healthz on port {port} never answered as awaited ({components or 'all'}); last: {last}")


def processes_under(var_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line or open files mention this var/ (servers included)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(var_dir) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


def server_pids(var_dir: Path) -> list[int]:
    """PostgreSQL's postmaster and redis-server, which run as daemons outside the supervisor's tree."""
    postmaster = int((var_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    redis_server = int((var_dir / "run" / "redis.pid").read_text().strip())
    return [postmaster, redis_server]


def tree_pids(root: psutil.Process) -> list[int]:
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


def assert_all_gone(pids: list[int], var_dir: Path) -> None:
    deadline = time.monotonic() + 30
    alive: list[int] = []
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not alive and not processes_under(var_dir):
            return
        time.sleep(0.3)
    raise AssertionError(f"left behind: {alive} {[p.cmdline() for p in processes_under(var_dir)]}")


@dataclass
class RunningPlatform:
    process: subprocess.Popen[bytes]
    var_dir: Path
    port: int
    startup_s: float


@pytest.fixture(scope="module")
def running_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    var_dir = tmp_path_factory.mktemp("platform") / "var"
    port = free_port()
    started = time.monotonic()
    # `make run` in its own session, as a terminal would run it: Ctrl-C then reaches the whole group.
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"], cwd=BASE_DIR, env=platform_env(var_dir, port), start_new_session=True
    )
    try:
        wait_healthy(port)
        yield RunningPlatform(process, var_dir, port, time.monotonic() - started)
    finally:
        if process.poll() is None:
            # SIGTERM first: the supervisor stops its children, each in a session of its own that
            # a SIGKILL of this group would leave running (a run of only some of these tests).
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_first_start_is_healthy_with_every_component(running_platform: RunningPlatform) -> None:
    status, body = healthz(running_platform.port)
    assert status == 200
    assert {name for name, component in body["components"].items() if component["status"] == "ok"} == {
        "database",
        "pgvector",
        "broker",
        "workers",
        "xinference",
    }
    assert body["components"]["xinference"]["models"] == {
        "all-minilm-l6-v2": "running",
        "smollm2-135m-instruct": "running",
    }
    # What the supervisor, Docker and load balancers see: the same 200, each status alone.
    assert healthz(running_platform.port, details=False) == (
        200,
        {"status": "ok", "components": {name: {"status": "ok"} for name in body["components"]}},
    )
    print(f"first make run healthy, both models running, after {running_platform.startup_s:.1f}s")


def test_the_admin_can_log_in_with_the_printed_password(running_platform: RunningPlatform) -> None:
    login_page = urllib.request.urlopen(f"http://127.0.0.1:{running_platform.port}/admin/login/", timeout=5)
    assert login_page.status == 200
    static = urllib.request.urlopen(f"http://127.0.0.1:{running_platform.port}/static/admin/css/base.css", timeout=5)
    assert static.status == 200


def test_a_second_start_on_the_same_var_is_refused(running_platform: RunningPlatform) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "runtime.supervisor"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env=platform_env(running_platform.var_dir, free_port()),
    )
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert healthz(running_platform.port)[0] == 200


def test_a_taken_port_is_one_line_naming_it(running_platform: RunningPlatform, tmp_path: Path) -> None:
    other = subprocess.run(
        [sys.executable, "-m", "runtime.supervisor"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env=platform_env(tmp_path / "var", running_platform.port),
    )
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"[supervisor] error: port {running_platform.port} on 127.0.0.1 is taken: stop what uses it or set PORT"
    ]


def test_a_killed_child_is_restarted(running_platform: RunningPlatform) -> None:
    web = web_server(running_platform)
    web.kill()
    time.sleep(1)
    wait_healthy(running_platform.port, timeout=60)
    assert web_server(running_platform).pid != web.pid


def web_server(running_platform: RunningPlatform) -> psutil.Process:
    supervisor = next(
        p for p in psutil.Process(running_platform.process.pid).children() if "supervisor" in " ".join(p.cmdline())
    )
    return next(child for child in supervisor.children() if "uvicorn" in " ".join(child.cmdline()))


def database_sessions(cursor: psycopg.Cursor) -> int:
    """Sessions ever opened on the platform's database (PostgreSQL counts them as they start)."""
    cursor.execute("SELECT pg_stat_clear_snapshot()")
    cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_the_web_runs_a_process_per_core_reusing_pooled_database_connections(
    running_platform: RunningPlatform,
) -> None:
    from runtime.service_urls import parse_database_url

    web = web_server(running_platform)
    command = web.cmdline()
    assert command[command.index("--workers") + 1] == str(os.cpu_count())
    # uvicorn's worker processes (multiprocessing's spawn; its resource tracker is one more child).
    workers = [child for child in web.children() if "spawn_main" in " ".join(child.cmdline())]
    assert len(workers) == os.cpu_count()
    environment = web.environ()
    assert environment["DATABASE_POOL_MAX_SIZE"] == "20"
    database = parse_database_url(environment["DATABASE_URL"])
    with (
        psycopg.connect(
            host=database["HOST"], user=database["USER"], dbname=database["NAME"], autocommit=True
        ) as connection,
        connection.cursor() as cursor,
    ):
        healthz(running_platform.port)  # each web process has opened its pool
        time.sleep(1.5)  # a backend reports its statistics at most once a second
        before = database_sessions(cursor)
        for _ in range(60):
            assert healthz(running_platform.port)[0] == 200  # each reads the database
        time.sleep(1.5)
        opened = database_sessions(cursor) - before
    # A connection opened per request (Django's per-thread connections under ASGI) would be 60 here.
    # The count is the whole database's: the Celery worker and beat, running their periodic tasks
    # meanwhile, open a few sessions of their own (a prefork child's first task, CONN_MAX_AGE expiry).
    background_allowance = 8
    assert opened <= 2 * os.cpu_count() + background_allowance  # type: ignore[operator]


def test_the_web_keeps_an_idle_connection_open_longer_than_clients_keep_theirs(
    running_platform: RunningPlatform,
) -> None:
    """A client reusing a keep-alive connection idle for 6 s (httpx keeps one 5 s) is answered on
    it: at uvicorn's default 5 s the server had closed it, and a request sent just then was reset."""
    connection = http.client.HTTPConnection("127.0.0.1", running_platform.port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        assert connection.sock is not None
        local_port = connection.sock.getsockname()[1]
        time.sleep(6)
        # A connection the server had closed: RemoteDisconnected here.
        connection.request("GET", "/healthz")
        second = connection.getresponse()
        second.read()
        assert (first.status, second.status) == (200, 200)
        assert connection.sock.getsockname()[1] == local_port  # the same connection
    finally:
        connection.close()


def test_a_killed_embedded_redis_is_started_again(running_platform: RunningPlatform) -> None:
    _postmaster, redis_pid = server_pids(running_platform.var_dir)
    psutil.Process(redis_pid).kill()
    time.sleep(3)
    wait_healthy(running_platform.port, timeout=90)
    assert server_pids(running_platform.var_dir)[1] != redis_pid


def test_killing_the_xinference_process_group_is_healed_without_a_person(running_platform: RunningPlatform) -> None:
    supervisor = next(
        p for p in psutil.Process(running_platform.process.pid).children() if "supervisor" in " ".join(p.cmdline())
    )
    xinference = next(child for child in supervisor.children() if "xinference-local" in " ".join(child.cmdline()))
    model_processes = xinference.children(recursive=True)
    assert model_processes, "the models run in processes of their own under xinference-local"
    killed = time.monotonic()
    os.killpg(xinference.pid, signal.SIGKILL)
    time.sleep(2)
    assert healthz(running_platform.port)[0] == 503
    body = wait_healthy(running_platform.port)
    print(
        f"Xinference process group killed; healthy again, both models running, after {time.monotonic() - killed:.1f}s"
    )
    assert set(body["components"]["xinference"]["models"].values()) == {"running"}


def test_ctrl_c_stops_everything_and_leaves_no_process(running_platform: RunningPlatform) -> None:
    make = psutil.Process(running_platform.process.pid)
    pids = tree_pids(make) + server_pids(running_platform.var_dir)
    assert len(pids) >= 6  # make, supervisor, web, worker (+ pool), beat, postgres, redis
    os.killpg(running_platform.process.pid, signal.SIGINT)
    running_platform.process.wait(timeout=60)
    assert_all_gone(pids, running_platform.var_dir)


def test_a_later_start_reuses_everything_and_sigterm_leaves_no_process(running_platform: RunningPlatform) -> None:
    """Runs after the Ctrl-C test on the same var/: no setup left to do, so it serves at once.
    SIGTERM comes while Xinference is still launching the models (the first start showed that
    they come up; launching them again here cost two minutes of a test run): the stop must not
    leave a half-started server or model process behind either."""
    assert running_platform.process.poll() is not None
    started = time.monotonic()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "runtime.supervisor"],
        cwd=BASE_DIR,
        start_new_session=True,
        env=platform_env(running_platform.var_dir, running_platform.port),
    )
    try:
        wait_healthy(running_platform.port, components={"database", "pgvector", "broker", "workers"})
        print(f"later start serving after {time.monotonic() - started:.1f}s")
        tree = psutil.Process(supervisor.pid)
        assert any("xinference-local" in " ".join(child.cmdline()) for child in tree.children())
        pids = tree_pids(tree) + server_pids(running_platform.var_dir)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        assert_all_gone(pids, running_platform.var_dir)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://user@db/chat", "DATABASE_URL must start with postgres://"),
        ("REDIS_URL", "http://redis:6379", "REDIS_URL must start with redis://"),
        ("PORT", "eighty", "PORT must be a number"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be a number from 1 to 1000, got '0'"),
        ("DATABASE_POOL_MAX_SIZE", "many", "DATABASE_POOL_MAX_SIZE must be a number from 1 to 1000"),
    ],
)
def test_malformed_configuration_is_one_line_and_non_zero(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.supervisor"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env=platform_env(tmp_path / "var", free_port(), **{variable: value}),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert expected in lines[0]


def test_unreachable_database_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.supervisor"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env=platform_env(tmp_path / "var", free_port(), DATABASE_URL=f"postgres://app@127.0.0.1:{free_port()}/chat"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[supervisor] error: DATABASE_URL: cannot connect to PostgreSQL")
    assert not processes_under(tmp_path / "var")
