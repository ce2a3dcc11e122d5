"""The pipeline our users write by hand, run in its own environment (var/bench/bench-venv: torch
CPU, sentence-transformers, FAISS, LangChain community loaders): load HTML, split with
RecursiveCharacterTextSplitter(1000, 200), embed in process with the same model, index in FAISS;
then answer the quality questions and, when asked, time searches at padded sizes. Not imported by
the platform.

One argument: a JSON job {"files": [paths], "model_dir": path, "questions": [text],
"queries": [text], "sizes": [chunk counts]} (queries and sizes may be empty). Prints one JSON
object: the ingestion's timings, per question its 10 best chunks (`documents`: each chunk's source
file name, the platform's `original_name`; `texts`; `latency_ms`), each page's text as the loader
extracted it (`page_texts`), and the padded searches' milliseconds. Scoring is the bench's
(bench/quality.py, with evaluation.metrics), so both sides are scored by the same code."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TOP_K = 10


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    files = [Path(path) for path in job["files"]]
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
    embeddings = HuggingFaceEmbeddings(model_name=job["model_dir"], encode_kwargs={"batch_size": 64})
    model_load_s = time.perf_counter() - started

    started = time.perf_counter()
    store = FAISS.from_documents(chunks, embeddings)
    embed_index_s = time.perf_counter() - started

    # Before any padding: the questions are answered from the real chunks only. One search first,
    # unmeasured, as the platform's model has served requests before its runs.
    store.similarity_search("warm-up", k=TOP_K)
    answers = []
    for question in job["questions"]:
        started = time.perf_counter()
        found = store.similarity_search(question, k=TOP_K)
        latency_ms = (time.perf_counter() - started) * 1000
        answers.append(
            {
                "documents": [Path(chunk.metadata["source"]).name for chunk in found],
                "texts": [chunk.page_content for chunk in found],
                "latency_ms": latency_ms,
            }
        )

    search_ms = {}
    if job["queries"]:
        for size in [len(chunks), *job["sizes"]]:
            padded = pad_store(store, size)
            latencies = []
            for query in job["queries"]:
                started = time.perf_counter()
                padded.similarity_search(query, k=TOP_K)
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
                "answers": answers,
                "page_texts": {Path(page.metadata["source"]).name: page.page_content for page in documents},
                "search_ms": search_ms,
            },
            ensure_ascii=False,
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
