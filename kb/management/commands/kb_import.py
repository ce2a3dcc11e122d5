"""`python manage.py kb_import KB PATH...`: files and folders into a knowledge base, with a
progress bar for the upload and then for ingestion."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from kb.models import ACTIVE_STATUSES, Document, DocumentStatus, KnowledgeBase
from kb.services import documents_upload
from kb.storage import StorageQuotaExceeded
from kb.uploads import Rejection


def knowledge_base_named(reference: str) -> KnowledgeBase:
    """By id, or by name when the name is unique across teams (else say team-slug/name)."""
    if reference.isdigit():
        kb = KnowledgeBase.objects.filter(pk=int(reference)).first()
    elif "/" in reference:
        team_slug, name = reference.split("/", 1)
        kb = KnowledgeBase.objects.filter(team__slug=team_slug, name=name).first()
    else:
        matches = list(KnowledgeBase.objects.filter(name=reference)[:2])
        if len(matches) > 1:
            raise CommandError(f"several teams have a knowledge base named {reference!r}: say TEAM-SLUG/{reference}")
        kb = matches[0] if matches else None
    if kb is None:
        raise CommandError(f"no knowledge base {reference!r} (give its id, name or TEAM-SLUG/NAME)")
    return kb


class Command(BaseCommand):
    help = "Import files and folders into a knowledge base and wait until they are ingested."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("knowledge_base", help="id, name, or TEAM-SLUG/NAME")
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument("--no-wait", action="store_true", help="return once uploaded, before ingestion ends")

    def handle(self, *args: Any, **options: Any) -> None:
        kb = knowledge_base_named(options["knowledge_base"])
        files = self._collect(options["paths"])
        created: list[int] = []
        duplicates = 0
        rejected: list[Rejection] = []
        for path in tqdm(files, desc="upload", unit="file", file=self.stderr._out):
            with open(path, "rb") as handle:
                try:
                    result = documents_upload(kb=kb, uploads=[(handle, path.name)])
                except StorageQuotaExceeded as exc:
                    raise CommandError(f"{path}: {exc}") from None
            created.extend(document.pk for document in result.created)
            duplicates += len(result.duplicates)
            rejected.extend(result.rejected)
        for refusal in rejected:
            self.stderr.write(f"rejected {refusal.name}: {refusal.reason}")
        self.stdout.write(f"{len(created)} new, {duplicates} already present, {len(rejected)} rejected")
        if created and not options["no_wait"]:
            self._wait(created)

    def _collect(self, paths: list[Path]) -> list[Path]:
        files: list[Path] = []
        for path in paths:
            if path.is_dir():
                files.extend(sorted(child for child in path.rglob("*") if child.is_file()))
            elif path.is_file():
                files.append(path)
            else:
                raise CommandError(f"{path} does not exist")
        return files

    def _wait(self, document_ids: list[int]) -> None:
        documents = Document.objects.filter(pk__in=document_ids)
        with tqdm(total=len(document_ids), desc="ingest", unit="doc", file=self.stderr._out) as bar:
            done = 0
            while done < len(document_ids):
                time.sleep(1)
                finished = documents.exclude(status__in=ACTIVE_STATUSES).count()
                bar.update(finished - done)
                done = finished
        failed = documents.filter(status=DocumentStatus.FAILED)
        for document in failed:
            self.stderr.write(f"failed {document.original_name}: {document.error}")
        self.stdout.write(f"{len(document_ids) - failed.count()} ready, {failed.count()} failed")
