"""The HNSW index for 384-dimensional embeddings (the embedded default model). Other sizes get
theirs when a knowledge base first uses them (kb.vector_indexes.ensure_vector_index)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("kb", "0002_initial")]
    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS kb_chunk_embedding_384_hnsw ON kb_chunk USING hnsw "
            "((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384",
            reverse_sql="DROP INDEX IF EXISTS kb_chunk_embedding_384_hnsw",
        )
    ]
