"""`python manage.py kb_rebuild KB`: re-chunk and re-embed every document beside the live index."""

from __future__ import annotations

from argparse import BooleanOptionalAction
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.domain_errors import DomainError
from kb.management.commands.kb_import import knowledge_base_named
from kb.services import kb_rebuild
from models_registry.models import ModelRegistration


class Command(BaseCommand):
    help = "Rebuild a knowledge base (optionally with a new embedding model or chunking); search stays up."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("knowledge_base", help="id, name, or TEAM-SLUG/NAME")
        parser.add_argument("--embedding-model", type=int, help="registration id of the new embedding model")
        parser.add_argument("--splitter", choices=["recursive", "tokens", "headings"])
        parser.add_argument("--chunk-size", type=int)
        parser.add_argument("--chunk-overlap", type=int)
        parser.add_argument(
            "--chunk-headers", action=BooleanOptionalAction, help="start each chunk with its page's heading path"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        kb = knowledge_base_named(options["knowledge_base"])
        model = None
        if options["embedding_model"] is not None:
            model = ModelRegistration.objects.filter(pk=options["embedding_model"], team_id=kb.team_id).first()
            if model is None:
                raise CommandError(f"no model {options['embedding_model']} in the team of {kb.name}")
        try:
            kb = kb_rebuild(
                kb=kb,
                embedding_model=model,
                splitter=options["splitter"],
                chunk_size=options["chunk_size"],
                chunk_overlap=options["chunk_overlap"],
                chunk_headers=options["chunk_headers"],
            )
        except DomainError as exc:
            raise CommandError(str(exc)) from exc
        state = f"rebuilding as generation {kb.generation + 1}" if kb.rebuilding else f"at generation {kb.generation}"
        self.stdout.write(f"{kb.name}: {kb.documents.count()} document(s) queued; {state}")
