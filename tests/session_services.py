"""The test process's PostgreSQL and Redis, settled before pytest-django imports the settings.

Each parallel test process (pytest-xdist's gw0, gw1, ...) gets a var/ of its own under the run's,
and with it its own embedded PostgreSQL, Redis and media files; each then starts its own Celery
worker and Xinference (session fixtures), so no test can see or stop another process's services.
xdist sets PYTEST_XDIST_WORKER in a worker's environment before the worker loads any plugin.

Loaded with `-p tests.session_services` (pyproject's addopts): conftest.py is imported after the
settings, too late to set their environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.embedded import forget_inherited_embedded_services, use_embedded_services

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker and "CHATPLATFORM_VAR_DIR" in os.environ:
    os.environ["CHATPLATFORM_VAR_DIR"] = str(Path(os.environ["CHATPLATFORM_VAR_DIR"]) / _worker)
    # A worker inherits the controller's environment, the controller's embedded URLs with it.
    forget_inherited_embedded_services()
use_embedded_services()
