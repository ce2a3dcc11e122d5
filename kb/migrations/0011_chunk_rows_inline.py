"""A chunk's row keeps its vector, text and search terms inline (no TOAST) up to a page's size.

By default PostgreSQL moves a row's large values out to its TOAST table once the row passes
about 2 kB, and a chunk's row is about 4.5 kB (a 384-float vector is 1.5 kB, its text and search
terms the rest). An exact vector search then fetched every chunk's vector through the TOAST index,
and full-text ranking fetched its search terms the same way, once per query term: on the bench's
7,808 chunks the exact vector query read 46,556 buffers in 53 ms, and 1,966 in 13 ms with the
rows inline (bench/search_phases.py). The vector keeps MAIN storage so that an unusually long row
moves its text out before its vector. Rows written before this migration keep their layout until
their knowledge base is rebuilt or their documents are ingested again.
"""

from django.db import migrations

FORWARD = [
    "ALTER TABLE kb_chunk SET (toast_tuple_target = 8160)",
    "ALTER TABLE kb_chunk ALTER COLUMN embedding SET STORAGE MAIN",
]
BACKWARD = [
    "ALTER TABLE kb_chunk ALTER COLUMN embedding SET STORAGE EXTERNAL",
    "ALTER TABLE kb_chunk RESET (toast_tuple_target)",
]


class Migration(migrations.Migration):
    dependencies = [("kb", "0010_web_sources")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
