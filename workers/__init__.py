"""The Celery app, its queues and routing; tasks stay thin and live beside their apps."""

from workers.celery import app

__all__ = ["app"]
