#!/usr/bin/env bash
# Container entrypoint for the chatplatform image.
#
#   web             bootstrap (migrate, default team, admin; retried until the database is
#                   reachable), then uvicorn
#   worker [args]   Celery worker for the ingest, llm and default queues
#   beat [args]     Celery beat (run exactly one; the schedule lives on a volume)
#   manage <args>   python manage.py <args>
#   anything else   executed as given (e.g. bash)
#
# Each role ends in `exec`, so the server replaces this shell and receives SIGTERM directly
# (uvicorn and Celery then shut down gracefully).
set -euo pipefail

cd /app

# `bootstrap` (which migrates first) is the readiness probe for the database: it fails while
# Postgres is still starting, so retry it rather than needing a separate wait-for-it tool.
bootstrap_with_retries() {
  local max_tries=${BOOTSTRAP_MAX_TRIES:-30}
  local delay=${BOOTSTRAP_RETRY_DELAY:-2}
  local try
  for ((try = 1; try <= max_tries; try++)); do
    if python manage.py bootstrap; then
      return 0
    fi
    if ((try == max_tries)); then
      echo "entrypoint: giving up: bootstrap failed ${max_tries} times" >&2
      return 1
    fi
    echo "entrypoint: bootstrap failed (attempt ${try}/${max_tries}); retrying in ${delay}s" >&2
    sleep "${delay}"
  done
}

# Refuses to start production on a secret left empty or at its docker/.env.example placeholder
# (chatplatform.checks, one line per value to fix), before any role serves or works.
deploy_check() {
  if ! python manage.py check --deploy --fail-level ERROR; then
    echo "entrypoint: refusing to start: fix the errors above in docker/.env (see docker/.env.example)" >&2
    exit 1
  fi
}

role=${1:-web}
if (($#)); then shift; fi
case "${role}" in
  web | worker | beat) deploy_check ;;
esac

case "${role}" in
  web)
    # Migrates and creates the default team and admin user; safe to run on every start.
    bootstrap_with_retries
    # Each web process borrows database connections from a pool of at most this many (a request's
    # synchronous part runs in a thread of its own, where a persistent connection is never reused).
    # Size PostgreSQL's max_connections for WEB_CONCURRENCY x this, plus one per worker process.
    export DATABASE_POOL_MAX_SIZE="${DATABASE_POOL_MAX_SIZE:-20}"
    # --proxy-headers trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS (uvicorn reads it
    # from the environment; default 127.0.0.1).
    # --timeout-keep-alive above the proxy's and clients' own idle timeouts (runtime.supervisor
    # WEB_KEEP_ALIVE_S), so that they close an idle connection first, never mid-request.
    exec uvicorn chatplatform.asgi:application \
      --host 0.0.0.0 \
      --port "${PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-2}" \
      --timeout-keep-alive 75 \
      --proxy-headers \
      "$@"
    ;;
  worker)
    exec celery -A workers worker \
      -Q "${WORKER_QUEUES:-ingest,llm,default}" \
      --concurrency "${WORKER_CONCURRENCY:-2}" \
      -l info \
      "$@"
    ;;
  beat)
    exec celery -A workers beat -l info --schedule /data/beat/celerybeat-schedule "$@"
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  *)
    exec "${role}" "$@"
    ;;
esac
