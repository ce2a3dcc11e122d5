"""The HNSW indexes hold only the chunks of knowledge bases large enough to be searched through
them (kb.models.VectorIndex). Each existing index is recreated with the new predicate; no chunk is
in it yet, so that is instant. A knowledge base already past KB_EXACT_SEARCH_MAX_CHUNKS is searched
exactly until its first search asks the worker to index it."""

import re

from django.db import migrations, models

INDEX_NAME = re.compile(r"^kb_chunk_embedding_(\d+)_hnsw$")


def hnsw_indexes(schema_editor) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'kb_chunk'")
        names = [row[0] for row in cursor.fetchall()]
    return [(name, int(match.group(1))) for name in names if (match := INDEX_NAME.match(name))]


def recreate(schema_editor, predicate: str) -> None:  # type: ignore[no-untyped-def]
    for name, dims in hnsw_indexes(schema_editor):
        # Written out here rather than taken from kb.vector_indexes, which may change after this.
        expression, operators = (
            (f"(embedding::vector({dims}))", "vector_cosine_ops")
            if dims <= 2000
            else (f"(embedding::halfvec({dims}))", "halfvec_cosine_ops")
        )
        schema_editor.execute(f"DROP INDEX {name}")
        schema_editor.execute(
            f"CREATE INDEX {name} ON kb_chunk USING hnsw ({expression} {operators}) WHERE {predicate.format(dims=dims)}"
        )


def only_indexed_chunks(apps, schema_editor) -> None:  # type: ignore[no-untyped-def]
    recreate(schema_editor, "dims = {dims} AND in_vector_index")


def every_chunk(apps, schema_editor) -> None:  # type: ignore[no-untyped-def]
    recreate(schema_editor, "dims = {dims}")


class Migration(migrations.Migration):
    dependencies = [("kb", "0004_chunking_defaults")]

    operations = [
        migrations.AddField(
            model_name="knowledgebase",
            name="vector_index",
            field=models.CharField(
                choices=[
                    ("none", "Not indexed (searched exactly)"),
                    ("building", "Being indexed"),
                    ("ready", "Indexed"),
                ],
                default="none",
                editable=False,
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="chunk",
            name="in_vector_index",
            field=models.BooleanField(db_default=False, default=False, editable=False),
        ),
        migrations.RunPython(only_indexed_chunks, every_chunk),
    ]
