"""A real Celery worker process on every queue, against the database the caller uses (the test
run's, or a bench's), and how to wait for one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import redis
from kombu.exceptions import OperationalError as BrokerUnavailable

from realservices.processes import kill_group
from workers.celery import app as celery_app

BASE_DIR = Path(__file__).resolve().parent.parent


def database_url_of(settings_dict: dict) -> str:
    """A DATABASE_URL for the database this test run uses (pytest-django's test_ database)."""
    host = quote(settings_dict["HOST"], safe="") if settings_dict["HOST"].startswith("/") else settings_dict["HOST"]
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    password = f":{quote(settings_dict['PASSWORD'], safe='')}" if settings_dict.get("PASSWORD") else ""
    return f"postgres://{settings_dict['USER']}{password}@{host}{port}/{settings_dict['NAME']}"


def wait_for_worker(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if celery_app.control.ping(timeout=0.5):
                return
        except (redis.ConnectionError, BrokerUnavailable):
            pass  # a connection from before a Redis restart (the drills): redis-py dropped it, retry
        time.sleep(0.2)
    raise RuntimeError("the test Celery worker did not answer a ping in time; see its output above")


class WorkerProcess:
    """A real `celery worker` process on every queue, using the test database."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.node_name = f"test-worker-{os.getpid()}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-Q",
                "ingest,llm,default",
                "--concurrency",
                "2",
                "-n",
                self.node_name,
                "-l",
                "warning",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=BASE_DIR,
            env=self.env,
            start_new_session=True,
        )
        wait_for_worker(timeout=60)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as an OOM killer or a crash would."""
        assert self.process is not None
        kill_group(self.process)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
