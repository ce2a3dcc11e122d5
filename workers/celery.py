"""The one Celery app: `celery -A workers worker -Q ingest,llm,default`, `celery -A workers beat`.

Every setting comes from Django's settings under the CELERY_ namespace (chatplatform/settings.py):
acks late, reject on worker lost, prefetch 1, JSON only, time limits, the Redis visibility timeout.
"""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatplatform.settings")

QUEUES = ("ingest", "llm", "default")

app = Celery("chatplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in QUEUES]
app.autodiscover_tasks()
