"""Stopping a child started with `start_new_session=True` together with everything it started (a
server and its model processes, a Celery worker and its pool): its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the group at once, as an OOM killer or a crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the group; SIGKILL what is still there after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    kill_group(process)
