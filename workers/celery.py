"""The one Celery app: `celery -A workers worker -Q ingest,llm,default`, `celery -A workers beat`.

Every setting comes from Django's settings under the CELERY_ namespace (chatplatform/settings.py):
acks late, reject on worker lost, prefetch 1, JSON only, time limits, the Redis visibility timeout.
"""

import os

from celery import Celery
from celery.signals import worker_init
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")

QUEUES = ("ingest", "llm", "default")

app = Celery("chatplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in QUEUES]
# Beside CELERY_BEAT_SCHEDULE (settings): hourly, so each prune deletes an hour's worth of rows.
app.conf.beat_schedule = {
    **app.conf.beat_schedule,
    "accounts-prune-api-key-uses": {
        "task": "accounts.prune_api_key_uses",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}
app.autodiscover_tasks()


@worker_init.connect
def load_before_forking(**_: object) -> None:
    """What every pool process would otherwise load on its first document, loaded once here in
    the parent: the pool's processes are forked after this and start with it."""
    from kb import fulltext

    fulltext.segmenter()
