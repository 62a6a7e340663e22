"""Modelyard settings: everything comes from environment variables (see README "Configuration").

The embedded default needs no configuration at all: SQLite and local storage under ``var/``.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import dj_database_url

from config.env import env_bool, env_int, env_list, env_str

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot needs Keras 2 (tf_keras)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("MODELYARD_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("MODELYARD_DEBUG", False)
SECRET_KEY = env_str("MODELYARD_SECRET_KEY") or (
    "insecure-dev-key-only-for-local-use" if DEBUG or not env_bool("MODELYARD_PRODUCTION", False) else None
)
if not SECRET_KEY:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("MODELYARD_SECRET_KEY is required when MODELYARD_PRODUCTION=true")
ALLOWED_HOSTS = env_list("MODELYARD_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("MODELYARD_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks",
    "django_tasks_db",
    "registry",
    "metrics",  # VersionMetrics and the measuring harness: registry <- metrics <- optimization, releases
    "optimization",
    "releases",
    "django_htmx",
    "console",
    "integrations",  # issue 15: scoped tokens, idempotency keys, webhooks
]

MIDDLEWARE = [
    "config.prometheus.PrometheusMiddleware",  # first: it times everything below it
    "registry.requestid.RequestIdMiddleware",  # first: every response, error pages too, carries X-Request-ID
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
                "console.context.navigation",
            ],
        },
    },
]

# --- Database: SQLite by default, DATABASE_URL switches (e.g. to PostgreSQL) ----------------
_database_url = env_str("DATABASE_URL")
if _database_url:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("MODELYARD_SQLITE_PATH") or VAR_DIR / "modelyard.sqlite3",
            "OPTIONS": {
                # IMMEDIATE takes the write lock when a transaction starts, so two uploads that
                # allocate a version number serialize instead of failing with "database is locked".
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # Kept open across requests, as PostgreSQL's are: opening one per request costs more
            # than most requests (and closing the last one checkpoints and removes the WAL, with
            # an fsync), ~10 ms of a 4 ms read on a busy machine (bench/registry.py).
            "CONN_MAX_AGE": 60,
            # A file (not :memory:) so worker processes started by tests can share it; one per
            # test run so concurrent runs do not delete each other's database.
            "TEST": {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's ModelBackend with a user's own and group permissions read in one statement.
AUTHENTICATION_BACKENDS = ["registry.auth_backend.ModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# --- Artifact storage ------------------------------------------------------------------------
# Content-addressed blobs live under MODELYARD_STORAGE_ROOT. Uploads are streamed (and hashed)
# into its tmp/ subdirectory so that moving them into place is a rename on one filesystem.
STORAGE_ROOT = Path(env_str("MODELYARD_STORAGE_ROOT", str(VAR_DIR / "storage"))).resolve()
FILE_UPLOAD_TEMP_DIR = str(STORAGE_ROOT / "tmp")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)  # Django checks it exists at start-up
FILE_UPLOAD_HANDLERS = ["registry.uploads.HashingUploadHandler"]
FILE_UPLOAD_PERMISSIONS = 0o640
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(STORAGE_ROOT / "media")}},
    "artifacts": {"BACKEND": "registry.blobstore.BlobStorage",
                  "OPTIONS": {"location": str(STORAGE_ROOT / "blobs")}},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
MAX_ARTIFACT_BYTES = env_int("MODELYARD_MAX_ARTIFACT_BYTES", 2 * 1024**3, minimum=1)
MAX_UNPACKED_BYTES = env_int("MODELYARD_MAX_UNPACKED_BYTES", 8 * 1024**3, minimum=1)
MAX_COMPRESSION_RATIO = env_int("MODELYARD_MAX_COMPRESSION_RATIO", 200, minimum=1)
MAX_ARCHIVE_MEMBERS = env_int("MODELYARD_MAX_ARCHIVE_MEMBERS", 10_000, minimum=1)
# Datasets (.npz) are validated from their headers, never loaded in a web process; this caps what
# their arrays may declare (numpy would allocate it when a worker loads them).
MAX_DATASET_UNPACKED_BYTES = env_int("MODELYARD_MAX_DATASET_UNPACKED_BYTES", 1024**3, minimum=1)
# Every model artifact is read by TensorFlow in a warm inspector process, never in a web process
# (registry/inspector.py): per process that inspects, up to POOL_SIZE inspectors, each replaced
# after MAX_JOBS jobs or any crash/limit, exiting after IDLE_SECONDS without work (0: never).
INSPECT_POOL_SIZE = env_int("MODELYARD_INSPECT_POOL_SIZE", 1, minimum=1)
INSPECT_MAX_JOBS = env_int("MODELYARD_INSPECT_MAX_JOBS", 100, minimum=1)
INSPECT_IDLE_SECONDS = env_int("MODELYARD_INSPECT_IDLE_SECONDS", 600, minimum=0)
INSPECT_MEMORY_MB = env_int("MODELYARD_INSPECT_MEMORY_MB", 4096, minimum=16)
INSPECT_TIMEOUT = env_int("MODELYARD_INSPECT_TIMEOUT", 900, minimum=1)

# --- REST API --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "integrations.tokens.ScopedTokenAuthentication",  # Bearer myd_… (scoped, expiring)
        "rest_framework.authentication.TokenAuthentication",  # legacy: full rights of its user
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["registry.permissions.ModelPermissions"],
    # DRF's JSON written by orjson (registry/renderers.py); the browsable API as DRF has it.
    "DEFAULT_RENDERER_CLASSES": ["registry.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_PAGINATION_CLASS": "registry.pagination.Pagination",
    "PAGE_SIZE": env_int("MODELYARD_PAGE_SIZE", 50, minimum=1),
    "DEFAULT_FILTER_BACKENDS": ["registry.filters.FilterBackend"],
    # Refuses an over-deep JSON body before parsing it (registry/jsonlimits.py).
    "DEFAULT_PARSER_CLASSES": [
        "registry.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Documents every operation's error statuses in the one error shape (registry/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "registry.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "registry.api_common.exception_handler",
    # `?format=` is a version filter here (saved_model/keras/tflite), not a renderer override.
    "URL_FORMAT_OVERRIDE": "response_format",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Django's own refusals (CSRF, a too-large form field) answer in the API's error shape under /api/.
CSRF_FAILURE_VIEW = "registry.errorpages.csrf_failure"
# A form field or JSON body larger than this is a 413 (Django's default, stated here because the
# README promises it); uploaded files stream to disk and have their own limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MODELYARD_MAX_FORM_BYTES", 2_621_440, minimum=1024)

SPECTACULAR_SETTINGS = {
    "TITLE": "Modelyard API",
    "DESCRIPTION": "Model registry and release manager for TensorFlow.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Background tasks (django-tasks): the database backend and its worker by default ---------
# Queues by need: `gpu` (training passes), `cpu` (conversions, measuring), `deploy` (image builds,
# promotions, endpoint health); `default` stays for tasks enqueued before the split. `make run`'s
# worker serves them all; the fleet runs one worker per queue (deploy/README.md).
TASKS = {
    "default": {
        "BACKEND": env_str("MODELYARD_TASKS_BACKEND", "django_tasks_db.DatabaseBackend"),
        "QUEUES": ["default", "gpu", "cpu", "deploy"],
    }
}

# A running optimization job whose worker sent no heartbeat for this long is reaped (manage.py
# reap_jobs): queued again for another worker while it has attempts left, failed otherwise.
OPTIMIZATION_HEARTBEAT_TIMEOUT = env_int("MODELYARD_JOB_HEARTBEAT_TIMEOUT", 120, minimum=2)
OPTIMIZATION_MAX_ATTEMPTS = env_int("MODELYARD_JOB_MAX_ATTEMPTS", 2, minimum=1)
# Where a worker unpacks and trains (a host's local disk in the fleet); empty: the storage root's tmp/.
JOB_SCRATCH_DIR = env_str("MODELYARD_JOB_SCRATCH_DIR", "")

# --- Releases: image builds -------------------------------------------------------------------
DOCKER_HOST = env_str("DOCKER_HOST", "")  # empty: the docker SDK's defaults (DOCKER_HOST, the local socket)
DOCKER_TIMEOUT = env_int("MODELYARD_DOCKER_TIMEOUT", 600, minimum=1)
# The serving base image; the default is TF Serving's GPU image matching the TensorFlow version.
SERVING_BASE_IMAGE = env_str("MODELYARD_SERVING_BASE_IMAGE", "tensorflow/serving:2.21.0-gpu")
IMAGE_REGISTRY = env_str("MODELYARD_IMAGE_REGISTRY", "127.0.0.1:5000")  # host[:port] images are pushed to
IMAGE_NAMESPACE = env_str("MODELYARD_IMAGE_NAMESPACE", "modelyard")
IMAGE_REGISTRY_USERNAME = env_str("MODELYARD_REGISTRY_USERNAME", "")
IMAGE_REGISTRY_PASSWORD = env_str("MODELYARD_REGISTRY_PASSWORD", "")  # or MODELYARD_REGISTRY_PASSWORD_FILE
IMAGE_SOURCE_URL = env_str("MODELYARD_IMAGE_SOURCE_URL", "")

# --- Promotion -------------------------------------------------------------------------------
PROMOTION_DEADLINE = env_int("MODELYARD_PROMOTION_DEADLINE", 120, minimum=1)  # seconds, loading included
# docker endpoints: the route file each switch rewrites, read by `manage.py route_endpoint`.
ROUTES_DIR = Path(env_str("MODELYARD_ROUTES_DIR", str(VAR_DIR / "routes")))
PROMOTION_RPC_TIMEOUT = env_int("MODELYARD_PROMOTION_RPC_TIMEOUT", 10, minimum=1)
# Operators own the filesystem: a model_repository endpoint's directory must lie under one of
# these (symlinks resolved), never overlapping the storage root or the var dir (releases/endpoints.py).
SERVING_ROOTS = env_list("MODELYARD_SERVING_ROOTS", [str(VAR_DIR / "serving")])
# Docker engines a docker endpoint may name; an endpoint without docker_host uses DOCKER_HOST.
DOCKER_HOSTS = env_list("MODELYARD_DOCKER_HOSTS", [DOCKER_HOST or "unix:///var/run/docker.sock"])

# --- /metrics (config/prometheus.py) -----------------------------------------------------------
METRICS_ALLOW = env_list("MODELYARD_METRICS_ALLOW", ["127.0.0.1/32", "::1/128"])  # addresses/networks
METRICS_TOKEN = env_str("MODELYARD_METRICS_TOKEN", "")  # or _FILE; when set, required instead of METRICS_ALLOW
try:
    [ipaddress.ip_network(net, strict=False) for net in METRICS_ALLOW]
except ValueError as exc:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"MODELYARD_METRICS_ALLOW: {exc}") from exc

# --- Machine access (integrations/): tokens, idempotency keys, webhooks -----------------------
API_TOKEN_DEFAULT_DAYS = env_int("MODELYARD_API_TOKEN_DEFAULT_DAYS", 90, minimum=1)
API_TOKEN_MAX_DAYS = env_int("MODELYARD_API_TOKEN_MAX_DAYS", 365, minimum=1)
IDEMPOTENCY_TTL = env_int("MODELYARD_IDEMPOTENCY_TTL", 24 * 3600, minimum=60)  # seconds a key is remembered
WEBHOOK_ALLOWED_NETWORKS = env_list("MODELYARD_WEBHOOK_ALLOWED_NETWORKS", [])  # CIDRs; private ranges refused otherwise
WEBHOOK_TIMEOUT = env_int("MODELYARD_WEBHOOK_TIMEOUT", 10, minimum=1)
WEBHOOK_MAX_ATTEMPTS = env_int("MODELYARD_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = env_int("MODELYARD_WEBHOOK_RETRY_BASE_SECONDS", 30, minimum=0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("MODELYARD_LOG_LEVEL", "INFO")},
}
