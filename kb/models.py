"""Knowledge bases, their documents and the chunks that search reads."""

from __future__ import annotations

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils.translation import gettext_lazy as _
from pgvector.django import VectorField

from accounts.models import Team
from models_registry.models import ModelRegistration


class Splitter(models.TextChoices):
    RECURSIVE = "recursive", "Recursive characters (knows Chinese punctuation)"
    TOKENS = "tokens", "Token count (the embedding model's tokenizer)"
    HEADINGS = "headings", "Heading-aware (Markdown and HTML), then recursive"


# The chunking a knowledge base gets unless it asks for another: chosen by measurement on the
# natural-question sets (bench/questions; the issue-17 note has the figures): with chunk headers,
# 1000/150 against 800/100 took English hybrid recall@1 0.660 -> 0.673 and answer_in_chunk@5
# 0.604 -> 0.679, with a fifth fewer chunks to embed. The API, the web form and kb_create all
# default to these; existing knowledge bases keep theirs until rebuilt.
DEFAULT_SPLITTER = Splitter.RECURSIVE
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 150
# Each chunk starts with its page's heading path (title > section > subsection), so what the
# embedding, full text and the model read of a passage says what "this command" is about.
DEFAULT_CHUNK_HEADERS = True


class VectorIndex(models.TextChoices):
    """Whether a knowledge base's chunks are in their dimension's HNSW index. Search scans a
    knowledge base of at most KB_EXACT_SEARCH_MAX_CHUNKS chunks exactly, so those stay out of the
    index (every row in it costs each insert a graph walk); past that size it is indexed once, by
    the `kb.index_vectors` task, and its later chunks go in as they are stored."""

    NONE = "none", "Not indexed (searched exactly)"
    BUILDING = "building", "Being indexed"
    READY = "ready", "Indexed"


class RetrievalMode(models.TextChoices):
    """How a search ranks chunks: by meaning, by words, or both fused."""

    HYBRID = "hybrid", _("Hybrid")
    VECTOR = "vector", _("Vector")
    FULLTEXT = "fulltext", _("Full text")


class RebuildGate(models.TextChoices):
    """A built rebuild's way to the swap when the knowledge base has evaluation sets: scored
    against the live generation first, and held when it ranks worse (evaluation.gate)."""

    NONE = "", _("No gate")
    EVALUATING = "evaluating", _("Being evaluated before the swap")
    HELD = "held", _("Held: it ranks worse than the live generation")
    PASSED = "passed", _("Passed (or forced): swaps when built")


class KnowledgeBase(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="knowledge_bases")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    embedding_model = models.ForeignKey(ModelRegistration, on_delete=models.PROTECT, related_name="knowledge_bases")
    splitter = models.CharField(max_length=10, choices=Splitter.choices, default=DEFAULT_SPLITTER)
    chunk_size = models.PositiveIntegerField(
        default=DEFAULT_CHUNK_SIZE, help_text="Characters, or tokens for the token splitter."
    )
    chunk_overlap = models.PositiveIntegerField(default=DEFAULT_CHUNK_OVERLAP)
    chunk_headers = models.BooleanField(
        default=DEFAULT_CHUNK_HEADERS, help_text="Start each chunk with its page's title and heading path."
    )
    # Search reads chunks of `generation`. A rebuild (new chunking or embedding model) writes
    # `generation + 1` beside it and swaps when every document is built: no downtime.
    generation = models.PositiveIntegerField(default=1)
    rebuild_settings = models.JSONField(
        null=True, blank=True, help_text="While a rebuild runs: the settings it builds with."
    )
    rebuild_gate = models.CharField(
        max_length=10, choices=RebuildGate.choices, default=RebuildGate.NONE, blank=True, editable=False
    )
    rebuild_gate_reason = models.TextField(blank=True, default="", editable=False)
    vector_index = models.CharField(
        max_length=10, choices=VectorIndex.choices, default=VectorIndex.NONE, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="kb_unique_team_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def rebuilding(self) -> bool:
        return self.rebuild_settings is not None


class DocumentStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PARSING = "parsing", "Parsing"
    EMBEDDING = "embedding", "Embedding"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


ACTIVE_STATUSES = (DocumentStatus.QUEUED, DocumentStatus.PARSING, DocumentStatus.EMBEDDING)


class Document(models.Model):
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="documents")
    original_name = models.CharField(max_length=255)
    file = models.FileField(upload_to="documents/%Y/%m/", max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    content_type = models.CharField(max_length=100, help_text="Detected from the content, not the name.")
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    stage_timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage of the last run.")
    error = models.TextField(blank=True, default="")
    # What a ready document left out (pages past KB_OCR_MAX_PAGES, unreadable pages): not a failure.
    notice = models.TextField(blank=True, default="")
    chunk_count = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Which generation of the knowledge base this document's chunks were last built for.
    built_generation = models.PositiveIntegerField(default=0)
    # Fair dispatch: set when handed to a worker; a worker alive on it keeps pushing the lease.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "sha256"], name="document_unique_kb_sha256"),
        ]
        indexes = [
            models.Index(fields=["status", "dispatched_at"], name="document_dispatch_idx"),
            models.Index(fields=["knowledge_base", "-id"], name="document_kb_idx"),
        ]

    def __str__(self) -> str:
        return self.original_name


class Chunk(models.Model):
    """One passage. `embedding` has no fixed dimension so knowledge bases with different embedding
    models share the table; `dims` names it, and a partial expression HNSW index per dimension
    (`(embedding::vector(N)) WHERE dims = N AND in_vector_index`, kb.vector_indexes) makes every
    size searchable. `in_vector_index` follows its knowledge base's `vector_index`."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="chunks")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    generation = models.PositiveIntegerField()
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    dims = models.PositiveSmallIntegerField()
    embedding = VectorField()
    search_vector = SearchVectorField()
    in_vector_index = models.BooleanField(default=False, db_default=False, editable=False)
    # A member turned it off (ChunkEdit): kept, shown, never retrieved.
    disabled = models.BooleanField(default=False, db_default=False)

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "generation", "ordinal"], name="chunk_unique_position"),
        ]
        indexes = [
            GinIndex(fields=["search_vector"], name="chunk_search_vector_gin"),
            models.Index(fields=["knowledge_base", "generation"], name="chunk_kb_generation_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"


class ChunkEdit(models.Model):
    """A member's correction to one chunk of a document, kept through rebuilds: a rebuild's chunk
    whose parsed text hashes to `original_sha256` gets `text` (when set) and `disabled` again.
    An edit whose original no longer comes out of the splitter (other chunk settings, a changed
    file) stays here, shown as not applied."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunk_edits")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="chunk_edits")
    original_sha256 = models.CharField(max_length=64)
    original_text = models.TextField()
    text = models.TextField(blank=True, default="", help_text="The corrected text; empty keeps the original.")
    disabled = models.BooleanField(default=False)
    edited_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="chunk_edits"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(fields=["document", "original_sha256"], name="chunk_edit_unique_original"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}:{self.original_sha256[:12]}"


class WebSourceKind(models.TextChoices):
    """What a web source's URL is: one page, or a sitemap whose pages are fetched. `auto` decides
    by the first answer's content (a `<urlset>` or `<sitemapindex>` is a sitemap)."""

    AUTO = "auto", _("Decide by content")
    PAGE = "page", _("One page")
    SITEMAP = "sitemap", _("Sitemap")


class WebSourceStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    SYNCING = "syncing", _("Syncing")
    SYNCED = "synced", _("Synced")
    FAILED = "failed", _("Failed")


class WebSource(models.Model):
    """A URL or sitemap whose pages become documents of a knowledge base (kb.web_sources), fetched
    through the SSRF guard and synced again every `sync_interval_hours` (0: only on request)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="web_sources")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="web_sources")
    url = models.URLField(max_length=2000)
    kind = models.CharField(max_length=10, choices=WebSourceKind.choices, default=WebSourceKind.AUTO)
    max_pages = models.PositiveIntegerField(help_text="Pages fetched at most (at most KB_WEB_MAX_PAGES).")
    sync_interval_hours = models.PositiveIntegerField(default=24, help_text="0: synced only on request.")
    status = models.CharField(max_length=10, choices=WebSourceStatus.choices, default=WebSourceStatus.QUEUED)
    pages_total = models.PositiveIntegerField(default=0)
    pages_done = models.PositiveIntegerField(default=0)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    next_sync_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # What the last sync left out without failing (pages past max_pages, pages robots.txt disallows).
    notice = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="web_sources"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Moves with every page a sync fetches: a sync whose row stops moving has lost its worker.
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "url"], name="web_source_unique_kb_url"),
        ]
        indexes = [models.Index(fields=["status", "next_sync_at"], name="web_source_due_idx")]

    def __str__(self) -> str:
        return self.url

    @property
    def progress(self) -> int:
        """Pages done of the pages this sync fetches, 0-100."""
        if self.status == WebSourceStatus.SYNCED:
            return 100
        return 100 * self.pages_done // self.pages_total if self.pages_total else 0


class WebPageStatus(models.TextChoices):
    OK = "ok", _("In the knowledge base")
    SKIPPED = "skipped", _("Skipped")
    FAILED = "failed", _("Failed")


class WebPage(models.Model):
    """One page of a web source and the Document it became (none when skipped or failed before
    it was ever fetched whole). `content_sha256` is the hash of the fetched body: a sync re-embeds
    the page only when it changes."""

    source = models.ForeignKey(WebSource, on_delete=models.CASCADE, related_name="pages")
    url = models.URLField(max_length=2000)
    document = models.OneToOneField(Document, on_delete=models.CASCADE, null=True, blank=True, related_name="web_page")
    status = models.CharField(max_length=10, choices=WebPageStatus.choices, default=WebPageStatus.OK)
    error = models.TextField(blank=True, default="")
    content_sha256 = models.CharField(max_length=64, blank=True, default="")
    etag = models.CharField(max_length=500, blank=True, default="")
    last_modified = models.CharField(max_length=100, blank=True, default="")
    fetched_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["source", "url"], name="web_page_unique_source_url")]

    def __str__(self) -> str:
        return self.url
