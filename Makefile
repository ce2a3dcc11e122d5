# chatplatform: `make run` starts the whole platform, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
# Three test processes on 2 cores: with two, the cores idled while tests waited on model
# launches and workers (a fresh clone: pytest 20:50 with 2, 18:13 with 3).
TEST_PROCESSES ?= 3

.PHONY: run test xinference-venv-in-background lint typecheck bench bench-chunking bench-search bench-vector-index bench-streams bench-serving drills lock messages clean

# The platform's environment: pinned, hashed dependencies installed by uv (reproducible, and it
# ignores machine-wide pip indexes that could serve a different build of a pinned version).
$(VENV)/.runtime: requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install --quiet --python $(PY) --require-hashes -r requirements.lock
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(UV) pip install --quiet --python $(PY) --require-hashes -r requirements-dev.lock
	@touch $@

run: $(VENV)/.runtime
	@exec $(PY) -m runtime.supervisor

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# django-stubs imports the settings, which need the service URLs; mypy never connects to them.
typecheck: $(VENV)/.dev
	DATABASE_URL=postgres://typecheck@localhost/typecheck REDIS_URL=redis://localhost:6379/0 $(VENV)/bin/mypy

# Tests use their own var/ (CHATPLATFORM_VAR_DIR) so they never touch a running platform's data.
# TEST_PROCESSES run the test files in parallel (pytest-xdist, a file per process at a time), each
# with its own embedded PostgreSQL, Redis, Celery worker and Xinference (tests/session_services.py).
# The browser tests drive Debian's Chromium (Playwright's own browser download needs the internet).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The MySQL data-source tests start a MariaDB server of their own (tests/test_datasources.py).
/usr/sbin/mariadbd:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server

# The OCR tests and bench render Chinese and English text into images (tests/test_kb_ocr.py,
# bench/ocr_bench.py): a font with Chinese glyphs, Debian's smallest (1.6 MB).
/usr/share/fonts/truetype/wqy/wqy-microhei.ttc:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei

# Legacy formats (kb.legacy, tests/test_kb_legacy_formats.py): LibreOffice converts .doc, .rtf (Writer),
# .ppt, .odp (Impress), .xls and .ods (Calc); the tests save files with a password through its
# Python bridge (python3-uno). `make run` needs them only to read those formats.
LIBREOFFICE := /usr/lib/libreoffice/program
$(LIBREOFFICE)/libswlo.so $(LIBREOFFICE)/libsdlo.so $(LIBREOFFICE)/libsclo.so /usr/lib/python3/dist-packages/uno.py &:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libreoffice-writer-nogui \
		libreoffice-impress-nogui libreoffice-calc-nogui python3-uno

# On a fresh clone the Xinference environment (about 2.5 minutes, one core) installs in the
# background while lint and mypy run on the other core; the tests that need it wait on its lock
# (models_registry.embedded_xinference.ensure_venv).
xinference-venv-in-background: $(VENV)/.runtime
	@mkdir -p var
	$(PY) -m models_registry.embedded_xinference > var/xinference-venv-install.log 2>&1 &

test: $(VENV)/.dev xinference-venv-in-background lint typecheck /usr/bin/chromium /usr/sbin/mariadbd \
		/usr/share/fonts/truetype/wqy/wqy-microhei.ttc $(LIBREOFFICE)/libswlo.so $(LIBREOFFICE)/libsdlo.so \
		$(LIBREOFFICE)/libsclo.so /usr/lib/python3/dist-packages/uno.py
	CHATPLATFORM_VAR_DIR=$(CURDIR)/var/test $(PY) manage.py makemigrations --check --dry-run
	CHATPLATFORM_VAR_DIR=$(CURDIR)/var/test $(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile

# Figures for the README and the notes; never part of `make test`.
bench: $(VENV)/.dev
	$(PY) bench/run.py

# Failure drills (issue 8) at full size: a worker SIGKILLed, Redis restarted, Xinference stopped for a
# minute, PostgreSQL restarted, each during a 200-document ingestion; prints a report, exits 1 on a
# problem. Its own var/ (var/drills); tests/test_drills.py runs them small inside `make test`.
drills: $(VENV)/.dev
	$(PY) tests/drills.py

# 50 chat streams at once through the web tier, against a model server that stands in for a GPU.
bench-streams: $(VENV)/.dev
	$(PY) bench/streams.py

# The web tier under many API clients: one process against `make run`'s processes and pool, then a
# load run (200 API-key clients mixing reads, search, uploads and chat for a minute).
bench-serving: $(VENV)/.dev
	$(PY) bench/serving.py

# Where a search's time goes (query embedding, each mode), with the chunk rows inline and as before.
bench-search: $(VENV)/.dev
	$(PY) bench/search_phases.py

# Search at 100,000 chunks on the HNSW index, each chunk a distinct real sentence (not a copy).
bench-vector-index: $(VENV)/.dev
	$(PY) bench/vector_index.py

# The chunking default's evidence: the corpus ingested once per setting, quality per mode.
bench-chunking: $(VENV)/.dev
	$(PY) bench/chunking.py

# The Chinese catalogue: extract the strings, translate the new ones in locale/zh_Hans/.../django.po,
# then compile it (the .mo is committed, so a fresh machine needs no gettext tools). Needs gettext.
messages: $(VENV)/.runtime
	$(PY) manage.py makemessages -l zh_Hans --no-location --ignore=.venv --ignore=var --ignore=tests --ignore=bench --ignore=docker
	$(PY) manage.py compilemessages -l zh_Hans --ignore=.venv

lock: $(VENV)/.runtime
	$(UV) pip compile --quiet --python-version 3.11 --generate-hashes requirements.in -o requirements.lock
	$(UV) pip compile --quiet --python-version 3.11 --generate-hashes requirements-dev.in -o requirements-dev.lock

clean:
	rm -rf $(VENV) var/test .pytest_cache .mypy_cache .ruff_cache
