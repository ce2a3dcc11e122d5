"""Searches' query embeddings batched while a call is in flight (kb.query_embeddings), against
MiniLM on the real Xinference: a crowd of queries costs a call or two, each query gets its own
vector, and a model server that does not answer fails every query waiting on it without
stopping the next."""

from __future__ import annotations

import threading

import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

from kb.query_embeddings import QueryEmbeddingBatcher
from models_registry.langchain_models import embeddings_for
from models_registry.services import registration_launch
from realservices.offline_models import offline_embedding_on
from realservices.xinference import XinferenceServer, free_port

pytestmark = pytest.mark.django_db

QUERIES = [f"how do I read a file number {index} line by line in python?" for index in range(20)]


class RecordingEmbedder:
    """The real client, and the texts of each call it makes (the server answers every one)."""

    def __init__(self, client: OpenAIEmbeddings) -> None:
        self.client = client
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            self.calls.append(list(texts))
        return self.client.embed_documents(texts)


def test_queries_arriving_during_a_call_share_the_next_one_and_each_gets_its_own_vector(
    team, xinference: XinferenceServer
) -> None:
    client = embeddings_for(registration_launch(registration=offline_embedding_on(team, xinference.endpoint)))
    expected = [np.array(client.embed_query(query)) for query in QUERIES]
    recording = RecordingEmbedder(client)
    batcher = QueryEmbeddingBatcher()

    futures = [batcher.submit(recording, query) for query in QUERIES]
    vectors = [np.array(future.result(timeout=60)) for future in futures]

    # Queued while the first call was on its way, the others went together: not a call each.
    assert sorted(text for call in recording.calls for text in call) == sorted(QUERIES)
    assert len(recording.calls) <= 3
    for vector, own in zip(vectors, expected, strict=True):
        assert float(vector @ own / (np.linalg.norm(vector) * np.linalg.norm(own))) > 0.9999
    # And a lone query later is sent at once, alone.
    assert np.allclose(batcher.submit(recording, QUERIES[3]).result(timeout=60), expected[3], atol=1e-5)
    assert recording.calls[-1] == [QUERIES[3]]


def test_a_model_server_that_does_not_answer_fails_the_queries_waiting_on_it_and_no_other(
    team, xinference: XinferenceServer
) -> None:
    live = embeddings_for(registration_launch(registration=offline_embedding_on(team, xinference.endpoint)))
    down = OpenAIEmbeddings(
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        api_key=SecretStr("none"),
        model="all-MiniLM-L6-v2",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    batcher = QueryEmbeddingBatcher()

    failing = [batcher.submit(down, query) for query in QUERIES[:5]]
    answered = batcher.submit(live, QUERIES[0])
    for future in failing:
        with pytest.raises(openai.APIConnectionError):
            future.result(timeout=60)
    assert len(answered.result(timeout=60)) == 384
    # The failed queue is not stuck: the next query to it is sent, and fails on its own.
    with pytest.raises(openai.APIConnectionError):
        batcher.submit(down, QUERIES[1]).result(timeout=60)
