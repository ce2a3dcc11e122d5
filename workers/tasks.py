"""Tasks that belong to no domain app."""

from celery import shared_task


@shared_task(name="workers.echo", queue="default")
def echo(value: str) -> str:
    """Round-trips a value through the broker and a worker: used to prove the pipeline end to end."""
    return value
