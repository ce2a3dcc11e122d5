"""Thin Celery entry points on the `llm` queue (chat.* is routed there)."""

from __future__ import annotations

from celery import shared_task

from chat.services import conversation_summarize, conversation_title


@shared_task(name="chat.summarize", ignore_result=True, autoretry_for=(ConnectionError,), retry_backoff=True)
def summarize(conversation_id: int) -> None:
    conversation_summarize(conversation_id=conversation_id)


@shared_task(name="chat.title", ignore_result=True)
def title(conversation_id: int) -> None:
    conversation_title(conversation_id=conversation_id)
