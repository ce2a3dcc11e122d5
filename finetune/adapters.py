"""Back into the platform: a LoRA adapter trained on a dataset, registered on its base model, and
compared with it.

Registering makes the adapter a model of its own in the registry: the base's launch spec with
`lora_adapters` (Xinference's peft_model_config), kept running by the healer like any model, so
assistants can choose it. Xinference loads LoRA adapters with its transformers and vLLM engines
only (llama.cpp and MLX ignore them), so a base on another engine is refused with what to do.

The adapter's folder is read by the model server, from its own disk. On the embedded Xinference
(this machine) it must lie under FINETUNE_ADAPTER_DIR and hold `adapter_config.json` (a LoRA) and
`adapter_model.safetensors`: a pickled `adapter_model.bin` is refused, since loading it runs
whatever code it holds. On another server the path is that server's and cannot be checked from
here: a wrong one fails the launch, and the registration shows Xinference's message.

A comparison asks the dataset's held-back questions (finetune.building) of both models, at
temperature 0, and scores each answer against the answer people kept with two lexical measures
(token F1 and ROUGE-L, on words, and on characters for Chinese); it also runs each chosen
evaluation set once per model with answer scoring (evaluation.answers), side by side."""

from __future__ import annotations

import json
import logging
import posixpath
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from accounts.models import User
from chat.services import invoke_metered
from core.domain_errors import DomainError
from evaluation.models import EvaluationSet
from evaluation.services import EvaluationError, accepted_items, run_start
from finetune import formats
from finetune.building import held_back_rows
from finetune.models import Adapter, Comparison, ComparisonRun, ComparisonStatus, Dataset, DatasetStatus
from kb.models import RetrievalMode
from models_registry.models import ModelKind, ModelRegistration, ModelStatus, ProviderKind
from models_registry.providers import client_for
from models_registry.providers.base import ProviderError
from models_registry.services import registration_create, registration_heal, registration_terminate

logger = logging.getLogger(__name__)

LORA_ENGINES = ("transformers", "vllm")
MAX_PATH_CHARS = 1000
MAX_COMPARISON_ROWS = 200
DEFAULT_COMPARISON_ROWS = 20
ANSWER_MAX_TOKENS = 256
REFERENCE_MAX_TOKENS = 1000  # ROUGE-L is quadratic: a very long reference is cut
SAFETENSORS_MAX_HEADER_BYTES = 100 * 1024 * 1024
LAUNCH_POLL_S = 2.0
TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+")


class AdapterError(DomainError):
    pass


# --- registering ------------------------------------------------------------------------------


def _check_base(base: ModelRegistration) -> None:
    if base.kind != ModelKind.LLM:
        raise AdapterError(f"base_model: {base.name} is an {base.kind} model; a LoRA adapter goes on a chat model")
    if base.provider.kind != ProviderKind.XINFERENCE:
        raise AdapterError(
            "base_model: adapters are registered on Xinference models; on vLLM or another OpenAI-compatible "
            "server, serve the adapter there (vLLM: --lora-modules) and register its served name as a model"
        )
    engine = str(base.launch_spec.get("model_engine") or "").lower()
    if engine not in LORA_ENGINES:
        raise AdapterError(
            f"base_model: {base.name} runs on Xinference's {engine or 'default'} engine, which does not load LoRA "
            "adapters: register the base model in pytorch format with the transformers or vLLM engine"
        )


def _check_path(path: str) -> str:
    path = (path or "").strip()
    if not path or len(path) > MAX_PATH_CHARS or "\x00" in path:
        raise AdapterError(
            f"path: the adapter's folder on the model server, an absolute path of at most {MAX_PATH_CHARS} characters"
        )
    if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or ".." in path.split("/"):
        raise AdapterError("path: an absolute path without '..', such as /models/adapters/support-v3")
    return path.rstrip("/")


def _read_safetensors_header(file: Path) -> None:
    """Raises unless the file starts as safetensors does: an 8-byte length and a JSON header."""
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise AdapterError("path: adapter_model.safetensors is empty or cut short: save the adapter again")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= SAFETENSORS_MAX_HEADER_BYTES:
            raise AdapterError("path: adapter_model.safetensors is not a safetensors file: save the adapter again")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AdapterError("path: adapter_model.safetensors has a damaged header: save the adapter again") from None
    if not isinstance(header, dict) or not any(key != "__metadata__" for key in header):
        raise AdapterError("path: adapter_model.safetensors holds no tensors: save the adapter again")


def _check_local_folder(path: str) -> None:
    """The embedded server reads the folder from this machine: only under FINETUNE_ADAPTER_DIR,
    a LoRA, in safetensors."""
    root = Path(settings.FINETUNE_ADAPTER_DIR).resolve()
    folder = Path(path).resolve()
    if folder != root and root not in folder.parents:
        raise AdapterError(
            f"path: the local Xinference loads adapters from {root} only: copy the adapter's folder there"
        )
    if not folder.is_dir():
        raise AdapterError(
            f"path: no folder {path}: copy the adapter's folder (adapter_config.json and its weights) there"
        )
    config_file = folder / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(
            "path: the folder has no adapter_config.json: give the folder peft's save_pretrained wrote"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError("path: adapter_config.json is not JSON: save the adapter again") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError("path: adapter_config.json does not describe a LoRA adapter (peft_type LORA)")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        if (folder / "adapter_model.bin").exists():
            raise AdapterError(
                "path: the weights are a pickled adapter_model.bin, which runs code when loaded: save them as "
                "safetensors (peft's save_pretrained does by default) and register again"
            )
        raise AdapterError(
            "path: the folder has no adapter_model.safetensors: give the folder peft's save_pretrained wrote"
        )
    _read_safetensors_header(weights)


def adapter_register(*, dataset: Dataset, base_model_id: int, name: str, path: str, user: User) -> Adapter:
    """The adapter as a model of its own on the base's provider; the healer launches it."""
    if dataset.status != DatasetStatus.READY:
        raise AdapterError("the dataset is not built: register an adapter trained on a ready dataset")
    if dataset.format not in formats.MULTI_TURN:
        raise AdapterError(
            f"a {dataset.format} dataset trains no chat adapter: adapters come from the supervised formats "
            "(alpaca, sharegpt, openai, swift, xtuner); register an embedding model trained on triples as an "
            "embedding model"
        )
    base_model = (
        ModelRegistration.objects.select_related("provider").filter(pk=base_model_id, team_id=dataset.team_id).first()
    )
    if base_model is None:
        raise AdapterError(f"base_model: No model with id {base_model_id} in this team: choose one of its chat models")
    _check_base(base_model)
    name = (name or "").strip()
    if not name or len(name) > 120:
        raise AdapterError("name: a name of at most 120 characters, such as support-answers-v3")
    path = _check_path(path)
    if base_model.provider.is_embedded:
        _check_local_folder(path)
    lora_name = slugify(name)[:60] or "adapter"
    uid = f"{base_model.provider_model_uid}-{lora_name}"[:200]
    launch_spec = {key: value for key, value in base_model.launch_spec.items() if key != "lora_adapters"} | {
        "lora_adapters": [{"name": lora_name, "path": path}]
    }
    with transaction.atomic():
        try:
            registration = registration_create(
                provider=base_model.provider,
                kind=ModelKind.LLM,
                name=name,
                provider_model_uid=uid,
                launch_spec=launch_spec,
                custom_spec=base_model.custom_spec,
                context_length=base_model.context_length,
                keep_running=True,
            )
        except DomainError as exc:
            raise AdapterError(f"name: {exc}") from None
        adapter = Adapter.objects.create(
            team_id=dataset.team_id,
            dataset=dataset,
            base_model=base_model,
            registration=registration,
            path=path,
            created_by=user,
        )
    transaction.on_commit(lambda: _launch_soon(registration.pk))
    return adapter


def _launch_soon(registration_id: int) -> None:
    from models_registry.tasks import heal

    try:
        heal.delay(registration_id)
    except Exception:  # the healer's next round launches it
        logger.warning("could not queue the launch of registration %s", registration_id)


def adapter_delete(*, adapter: Adapter) -> None:
    """Stop the adapter's model and remove its registration (assistants that use it keep it)."""
    registration = adapter.registration
    if registration.assistants.exists():
        names = ", ".join(registration.assistants.values_list("name", flat=True)[:5])
        raise AdapterError(f"assistants answer with this adapter ({names}): choose another model for them first")
    try:
        registration_terminate(registration=registration)
    except ProviderError:
        logger.warning("could not stop %s on its provider; removing the registration anyway", registration.name)
    registration.delete()


# --- comparing --------------------------------------------------------------------------------


def _default_sets(dataset: Dataset) -> list[EvaluationSet]:
    """The evaluation sets of the knowledge bases the dataset was built from: its knowledge-base
    filter, else its assistant's knowledge bases."""
    filters = dataset.filters or {}
    sets = EvaluationSet.objects.filter(team_id=dataset.team_id)
    if filters.get("knowledge_base") is not None:
        sets = sets.filter(knowledge_base_id=filters["knowledge_base"])
    elif filters.get("assistant") is not None:
        sets = sets.filter(knowledge_base__assistants__pk=filters["assistant"])
    else:
        return []
    return [evaluation_set for evaluation_set in sets.distinct() if accepted_items(evaluation_set).exists()]


def _chosen_sets(adapter: Adapter, set_ids: Sequence[Any]) -> list[EvaluationSet]:
    chosen: list[EvaluationSet] = []
    for set_id in set_ids:
        if type(set_id) is not int:
            raise AdapterError("evaluation_sets: give the ids (whole numbers) of the team's evaluation sets")
        evaluation_set = EvaluationSet.objects.filter(pk=set_id, team_id=adapter.team_id).first()
        if evaluation_set is None:
            raise AdapterError(f"evaluation_sets: no evaluation set with id {set_id} in this team")
        if not accepted_items(evaluation_set).exists():
            raise AdapterError(f"evaluation_sets: {evaluation_set.name} has no accepted questions: accept some first")
        chosen.append(evaluation_set)
    return chosen


def comparison_start(
    *, adapter: Adapter, user: User, rows: int = DEFAULT_COMPARISON_ROWS, evaluation_sets: Sequence[Any] | None = None
) -> Comparison:
    """A comparison queued for a worker (the llm queue: it is model calls, beside chat's)."""
    if type(rows) is not int or not 0 <= rows <= MAX_COMPARISON_ROWS:
        raise AdapterError(f"rows: how many held-back questions to ask, 0 to {MAX_COMPARISON_ROWS}")
    dataset = adapter.dataset
    if dataset is None or dataset.status != DatasetStatus.READY:
        raise AdapterError("the adapter's dataset is gone or not built: its held-back questions are what is compared")
    sets = _chosen_sets(adapter, evaluation_sets) if evaluation_sets is not None else _default_sets(dataset)
    if rows and not dataset.counts.get("held_back"):
        if not sets:
            raise AdapterError(
                "nothing to compare on: the dataset holds back no questions (build it again with holdout) and "
                "no evaluation set was chosen"
            )
        rows = 0
    if not rows and not sets:
        raise AdapterError("nothing to compare on: ask some held-back questions (rows) or choose evaluation sets")
    comparison = Comparison.objects.create(
        team_id=adapter.team_id,
        adapter=adapter,
        row_limit=rows,
        evaluation_set_ids=[evaluation_set.pk for evaluation_set in sets],
        created_by=user,
    )
    transaction.on_commit(lambda: _compare_soon(comparison.pk))
    return comparison


def _compare_soon(comparison_id: int) -> None:
    from finetune.tasks import compare_soon

    compare_soon(comparison_id)


def _claim(comparison_id: int) -> Comparison | None:
    with transaction.atomic():
        comparison = (
            Comparison.objects.select_for_update(of=("self",))
            .select_related("adapter__dataset", "adapter__base_model__provider", "adapter__registration__provider")
            .filter(pk=comparison_id, status__in=(ComparisonStatus.QUEUED, ComparisonStatus.RUNNING))
            .first()
        )
        if comparison is None:
            return None
        comparison.status = ComparisonStatus.RUNNING
        comparison.progress = 0
        comparison.started_at = timezone.now()
        comparison.save(update_fields=["status", "progress", "started_at"])
    return comparison


def ensure_running(registration: ModelRegistration) -> None:
    """Wait for the model to run, launching it if nobody is (the healer may be launching it)."""
    deadline = time.monotonic() + settings.XINFERENCE_LAUNCH_TIMEOUT_S
    while True:
        try:
            running = {model.uid for model in client_for(registration.provider).running_models()}
        except ProviderError as exc:
            raise AdapterError(f"{registration.name}: {exc}") from None
        if registration.provider_model_uid in running:
            return
        registration_heal(registration_id=registration.pk)
        registration.refresh_from_db()
        if registration.status == ModelStatus.FAILED and registration.last_error:
            raise AdapterError(f"{registration.name} did not launch: {registration.last_error}")
        if time.monotonic() > deadline:
            raise AdapterError(f"{registration.name} did not launch in {settings.XINFERENCE_LAUNCH_TIMEOUT_S:.0f} s")
        time.sleep(LAUNCH_POLL_S)


def comparison_execute(*, comparison_id: int) -> Comparison | None:
    comparison = _claim(comparison_id)
    if comparison is None:
        return None
    adapter = comparison.adapter
    try:
        ensure_running(adapter.base_model)
        ensure_running(adapter.registration)
        rows = held_back_rows(adapter.dataset, comparison.row_limit) if comparison.row_limit and adapter.dataset else []
        scored: list[dict[str, Any]] = []
        for index, row in enumerate(rows, start=1):
            scored.append(_compare_row(comparison, row))
            Comparison.objects.filter(pk=comparison.pk).update(progress=min(99, index * 100 // len(rows)))
        _start_evaluation_runs(comparison)
    except (DomainError, ProviderError) as exc:
        return _fail(comparison, str(exc))
    except Exception as exc:
        logger.exception("comparison %s failed", comparison_id)
        return _fail(comparison, f"the comparison failed ({type(exc).__name__}: {exc}); run it again")
    comparison.rows = scored
    comparison.metrics = summarize(scored)
    comparison.status = ComparisonStatus.DONE
    comparison.progress = 100
    comparison.finished_at = timezone.now()
    comparison.save(update_fields=["rows", "metrics", "status", "progress", "finished_at"])
    return comparison


def _fail(comparison: Comparison, reason: str) -> Comparison:
    Comparison.objects.filter(pk=comparison.pk).update(
        status=ComparisonStatus.FAILED, error=reason[:4000], finished_at=timezone.now()
    )
    comparison.refresh_from_db()
    return comparison


def _prompt(row: dict[str, Any]) -> list[BaseMessage]:
    prompt: list[BaseMessage] = [SystemMessage(str(row.get("system") or ""))] if row.get("system") else []
    for question, answer in row.get("history") or []:
        prompt += [HumanMessage(str(question)), AIMessage(str(answer))]
    prompt.append(HumanMessage(str(row.get("question") or "")))
    return prompt


def _answer(comparison: Comparison, llm: ModelRegistration, prompt: list[BaseMessage]) -> str:
    reply = invoke_metered(
        llm=llm,
        prompt=prompt,
        max_tokens=ANSWER_MAX_TOKENS,
        team_id=comparison.team_id,
        user_id=int(comparison.created_by_id or 0),
        temperature=0.0,
    )
    return str(reply.content).strip()


def _compare_row(comparison: Comparison, row: dict[str, Any]) -> dict[str, Any]:
    adapter = comparison.adapter
    prompt = _prompt(row)
    reference = str(row.get("reference") or "")
    base_answer = _answer(comparison, adapter.base_model, prompt)
    adapter_answer = _answer(comparison, adapter.registration, prompt)
    return {
        "question": str(row.get("question") or ""),
        "reference": reference,
        "base": base_answer,
        "adapter": adapter_answer,
        "base_scores": overlap_scores(base_answer, reference).as_json(),
        "adapter_scores": overlap_scores(adapter_answer, reference).as_json(),
    }


def _start_evaluation_runs(comparison: Comparison) -> None:
    """Each chosen set once per model, retrieval in the default (hybrid) mode, with answer
    scoring; the evaluation worker runs them."""
    adapter = comparison.adapter
    user = comparison.created_by
    if user is None:
        return
    for evaluation_set in EvaluationSet.objects.filter(
        pk__in=comparison.evaluation_set_ids, team_id=comparison.team_id
    ):
        try:
            base_run, adapter_run = (
                run_start(
                    evaluation_set=evaluation_set,
                    modes=[RetrievalMode.HYBRID],
                    created_by=user,
                    answer_scoring=True,
                    answer_model=model,
                )
                for model in (adapter.base_model, adapter.registration)
            )
        except EvaluationError as exc:  # its questions went meanwhile
            logger.info("comparison %s leaves out set %s: %s", comparison.pk, evaluation_set.pk, exc)
            continue
        ComparisonRun.objects.create(comparison=comparison, base_run=base_run, adapter_run=adapter_run)


# --- scoring ----------------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    """Lower-cased words, and each Chinese character alone (Chinese is not written in words)."""
    return TOKEN.findall(text.lower())


@dataclass(frozen=True)
class OverlapScores:
    token_f1: float
    rouge_l: float

    def as_json(self) -> dict[str, float]:
        return {"token_f1": self.token_f1, "rouge_l": self.rouge_l}


def _f1(overlap: float, answer_length: int, reference_length: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / answer_length, overlap / reference_length
    return 2 * precision * recall / (precision + recall)


def _longest_common_subsequence(first: Sequence[str], second: Sequence[str]) -> int:
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for index, other in enumerate(second, start=1):
            current.append(previous[index - 1] + 1 if token == other else max(previous[index], current[index - 1]))
        previous = current
    return previous[-1]


def overlap_scores(answer: str, reference: str) -> OverlapScores:
    """Token F1 (SQuAD's: shared tokens, counted with repeats) and ROUGE-L F1 (the longest common
    subsequence), each 0 to 1."""
    answer_tokens, reference_tokens = tokens(answer), tokens(reference)[:REFERENCE_MAX_TOKENS]
    if not answer_tokens or not reference_tokens:
        return OverlapScores(token_f1=0.0, rouge_l=0.0)
    remaining: dict[str, int] = {}
    for token in reference_tokens:
        remaining[token] = remaining.get(token, 0) + 1
    shared = 0
    for token in answer_tokens:
        if remaining.get(token, 0) > 0:
            remaining[token] -= 1
            shared += 1
    lcs = _longest_common_subsequence(answer_tokens[:REFERENCE_MAX_TOKENS], reference_tokens)
    return OverlapScores(
        token_f1=round(_f1(shared, len(answer_tokens), len(reference_tokens)), 4),
        rouge_l=round(_f1(lcs, len(answer_tokens), len(reference_tokens)), 4),
    )


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each model's mean scores, and on how many questions each did better (by token F1)."""
    if not rows:
        return {"questions": 0}
    summary: dict[str, Any] = {"questions": len(rows)}
    for side in ("base", "adapter"):
        summary[side] = {
            metric: round(sum(row[f"{side}_scores"][metric] for row in rows) / len(rows), 4)
            for metric in ("token_f1", "rouge_l")
        }
    adapter_better = sum(row["adapter_scores"]["token_f1"] > row["base_scores"]["token_f1"] for row in rows)
    base_better = sum(row["adapter_scores"]["token_f1"] < row["base_scores"]["token_f1"] for row in rows)
    summary.update(
        adapter_better=adapter_better, base_better=base_better, ties=len(rows) - adapter_better - base_better
    )
    return summary
