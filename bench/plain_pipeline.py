"""The pipeline our users write by hand, run in its own environment (var/bench-venv: torch CPU,
sentence-transformers, FAISS, LangChain community loaders): load HTML, split with
RecursiveCharacterTextSplitter(1000, 200), embed in process with the same model, index in FAISS,
then answer the retrieval-quality questions (the source files of the 10 best chunks, best first)
and time searches. Prints one JSON object. Not imported by the platform.

Arguments: files list, model directory, latency queries (JSON), padded sizes (comma-separated),
quality questions (JSON)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    files = [Path(line) for line in Path(sys.argv[1]).read_text().splitlines() if line]
    model_dir, queries_file = sys.argv[2], sys.argv[3]
    from langchain_community.document_loaders import BSHTMLLoader
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from langchain_community.vectorstores import FAISS
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    started = time.perf_counter()
    documents = []
    for path in files:
        documents.extend(BSHTMLLoader(str(path), open_encoding="utf-8").load())
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    chunks = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(documents)
    split_s = time.perf_counter() - started

    started = time.perf_counter()
    embeddings = HuggingFaceEmbeddings(model_name=model_dir, encode_kwargs={"batch_size": 64})
    model_load_s = time.perf_counter() - started

    started = time.perf_counter()
    store = FAISS.from_documents(chunks, embeddings)
    embed_index_s = time.perf_counter() - started

    # Before any padding: the quality questions are answered from the real chunks only.
    quality_sources = [
        [chunk.metadata["source"] for chunk in store.similarity_search(question, k=10)]
        for question in json.loads(Path(sys.argv[5]).read_text())
    ]

    queries = json.loads(Path(queries_file).read_text())
    search_ms = {}
    for size in [len(chunks), *[int(size) for size in sys.argv[4].split(",")]]:
        padded = pad_store(store, size)
        latencies = []
        for query in queries:
            started = time.perf_counter()
            padded.similarity_search(query, k=10)
            latencies.append((time.perf_counter() - started) * 1000)
        search_ms[str(size)] = latencies
    print(
        json.dumps(
            {
                "documents": len(files),
                "chunks": len(chunks),
                "load_s": load_s,
                "split_s": split_s,
                "model_load_s": model_load_s,
                "embed_index_s": embed_index_s,
                "total_s": load_s + split_s + model_load_s + embed_index_s,
                "search_ms": search_ms,
                "quality_sources": quality_sources,
            }
        )
    )


def pad_store(store, size: int):  # type: ignore[no-untyped-def]
    """A copy of the FAISS store grown to `size` vectors with noisy copies of the real ones (the
    same synthetic padding the platform's side of the benchmark uses)."""
    import faiss
    import numpy as np

    base = store.index.reconstruct_n(0, store.index.ntotal)
    rng = np.random.default_rng(7)
    extra = size - len(base)
    if extra <= 0:
        return store
    noisy = base[rng.integers(0, len(base), extra)] + rng.normal(0, 0.02, (extra, base.shape[1])).astype("float32")
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.vstack([base, noisy]).astype("float32"))
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document

    ids = {position: str(position) for position in range(size)}
    docstore = InMemoryDocstore({str(position): Document(page_content="") for position in range(size)})
    return FAISS(store.embedding_function, index, docstore, ids)


if __name__ == "__main__":
    main()
