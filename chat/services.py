"""Writes and the turn itself: retrieval query → retrieve → prompt (system prompt, running summary, recent
turns, numbered sources) → answer → save with citations and usage → fold old turns into the summary.

A turn is prepared and finished by sync functions (database, retrieval) shared by the streaming
(async SSE) and the plain API; only the token stream in between is async."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, fields
from typing import Any

from django.db import transaction
from django.utils import timezone
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import BaseTool

from accounts.models import Team, User
from accounts.quotas import quota_check, quota_release, quota_reserve, usage_record
from chat import prompts
from chat.followups import retrieval_query
from chat.memory import estimate_prompt_tokens, estimate_tokens, recent_window, trim_to_budget
from chat.models import Assistant, Conversation, Message, MessageStatus
from chat.rooms import room_notify
from chat.tools import assistant_tools, tool_specs_clean
from core.domain_errors import DomainError
from core.unset import UNSET, Unset, given
from datasources.models import DataSource
from datasources.text_to_sql import SqlToolCall, sql_tool_call
from integrations.models import WebhookEvent
from integrations.services import webhook_emit
from kb.models import KnowledgeBase, RetrievalMode
from kb.retrieval import Hit, SearchRequest, kb_search
from models_registry.langchain_models import chat_model_for
from models_registry.models import ModelKind, ModelRegistration
from models_registry.selectors import team_default_model

logger = logging.getLogger(__name__)
SNIPPET_CHARS = 300
CITATION = re.compile(r"\[(\d{1,2})\]")


class ChatError(DomainError):
    pass


# --- assistants and conversations -------------------------------------------------------------


def _check_references(
    *,
    team: Team,
    llm: ModelRegistration | None = None,
    knowledge_bases: list[KnowledgeBase] | None = None,
    rerank_model: ModelRegistration | None = None,
    data_sources: list[DataSource] | None = None,
) -> None:
    """Every object an assistant points at is the team's own and of the right kind. Messages name
    ids, never names: the caller may have sent another team's id."""
    if llm is not None and (llm.team_id != team.pk or llm.kind != ModelKind.LLM):
        raise ChatError(f"llm: no LLM with id {llm.pk} in this team; choose one of the team's LLMs")
    if rerank_model is not None and (rerank_model.team_id != team.pk or rerank_model.kind != ModelKind.RERANK):
        raise ChatError(
            f"rerank_model: no rerank model with id {rerank_model.pk} in this team; choose one of the team's rerankers"
        )
    for kb in knowledge_bases or []:
        # A conversation's dropped files are private to it: no assistant may search them.
        if kb.team_id != team.pk or KnowledgeBase.objects.filter(pk=kb.pk, file_conversation__isnull=False).exists():
            raise ChatError(f"knowledge_bases: no knowledge base with id {kb.pk} in this team")
    for source in data_sources or []:
        if source.team_id != team.pk:
            raise ChatError(f"data_sources: no data source with id {source.pk} in this team")


def _check_name_free(team: Team, name: str, assistant_id: int | None = None) -> None:
    same_name = Assistant.objects.filter(team=team, name=name)
    if assistant_id is not None:
        same_name = same_name.exclude(pk=assistant_id)
    if same_name.exists():
        raise ChatError(f"the team has an assistant named {name!r} already: choose another name")


def _check_retrieval_mode(mode: str) -> None:
    if mode not in RetrievalMode.values:
        raise ChatError(f"retrieval_mode must be one of {', '.join(RetrievalMode.values)}")


@transaction.atomic
def assistant_create(
    *,
    team: Team,
    name: str,
    llm: ModelRegistration,
    knowledge_bases: list[KnowledgeBase] | None = None,
    data_sources: list[DataSource] | None = None,
    tools: list[dict[str, Any]] | None = None,
    rerank_model: ModelRegistration | None = None,
    system_prompt: str | None = None,
    retrieval_mode: str = RetrievalMode.HYBRID,
    top_k: int | None = None,
    score_threshold: float | None = None,
    recent_tokens: int | None = None,
    summary_tokens: int | None = None,
    max_answer_tokens: int | None = None,
) -> Assistant:
    """A new assistant of `team`; settings left as None take the model's defaults."""
    _check_references(
        team=team, llm=llm, knowledge_bases=knowledge_bases, rerank_model=rerank_model, data_sources=data_sources
    )
    _check_retrieval_mode(retrieval_mode)
    _check_name_free(team, name)
    optional = {
        "system_prompt": system_prompt,
        "top_k": top_k,
        "recent_tokens": recent_tokens,
        "summary_tokens": summary_tokens,
        "max_answer_tokens": max_answer_tokens,
    }
    assistant = Assistant.objects.create(
        team=team,
        name=name,
        llm=llm,
        rerank_model=rerank_model,
        retrieval_mode=retrieval_mode,
        score_threshold=score_threshold,
        tools=tool_specs_clean(tools or []),
        **{key: value for key, value in optional.items() if value is not None},
    )
    assistant.knowledge_bases.set(knowledge_bases or [])
    assistant.data_sources.set(data_sources or [])
    return assistant


@transaction.atomic
def assistant_update(
    *,
    assistant: Assistant,
    name: str | Unset = UNSET,
    llm: ModelRegistration | Unset = UNSET,
    knowledge_bases: list[KnowledgeBase] | Unset = UNSET,
    data_sources: list[DataSource] | Unset = UNSET,
    tools: list[dict[str, Any]] | Unset = UNSET,
    rerank_model: ModelRegistration | Unset | None = UNSET,
    system_prompt: str | Unset = UNSET,
    retrieval_mode: str | Unset = UNSET,
    top_k: int | Unset = UNSET,
    score_threshold: float | Unset | None = UNSET,
    recent_tokens: int | Unset = UNSET,
    summary_tokens: int | Unset = UNSET,
    max_answer_tokens: int | Unset = UNSET,
) -> Assistant:
    """Change what is given; the team never changes (an assistant is created in the team it serves)."""
    _check_references(
        team=assistant.team,
        llm=None if isinstance(llm, Unset) else llm,
        knowledge_bases=None if isinstance(knowledge_bases, Unset) else knowledge_bases,
        rerank_model=None if isinstance(rerank_model, Unset) else rerank_model,
        data_sources=None if isinstance(data_sources, Unset) else data_sources,
    )
    if not isinstance(retrieval_mode, Unset):
        _check_retrieval_mode(retrieval_mode)
    if not isinstance(name, Unset):
        _check_name_free(assistant.team, name, assistant_id=assistant.pk)
    changes = given(
        name=name,
        llm=llm,
        rerank_model=rerank_model,
        system_prompt=system_prompt,
        retrieval_mode=retrieval_mode,
        top_k=top_k,
        score_threshold=score_threshold,
        recent_tokens=recent_tokens,
        summary_tokens=summary_tokens,
        max_answer_tokens=max_answer_tokens,
        tools=tools if isinstance(tools, Unset) else tool_specs_clean(tools, previous=assistant.tools),
    )
    for key, value in changes.items():
        setattr(assistant, key, value)
    if changes:
        assistant.save(update_fields=[*changes, "updated_at"])
    if not isinstance(knowledge_bases, Unset):
        assistant.knowledge_bases.set(knowledge_bases)
    if not isinstance(data_sources, Unset):
        assistant.data_sources.set(data_sources)
    return assistant


def assistant_default_for(*, team: Team) -> Assistant:
    """The team's first assistant, created from its default LLM when it has none, so that a new
    team can chat at once."""
    existing = Assistant.objects.filter(team=team).order_by("pk").first()
    if existing is not None:
        return existing
    llm = team_default_model(team=team, kind=ModelKind.LLM)
    if llm is None:
        raise ChatError("the team has no assistant and no default LLM: register a model and set it as default")
    return assistant_create(team=team, name="Assistant", llm=llm)


def _check_assistant(team: Team, assistant: Assistant) -> None:
    if assistant.team_id != team.pk:
        raise ChatError(f"assistant: no assistant with id {assistant.pk} in this team; choose one of the team's")


def conversation_create(*, team: Team, owner: User, assistant: Assistant, is_room: bool = False) -> Conversation:
    _check_assistant(team, assistant)
    conversation = Conversation.objects.create(team=team, owner=owner, assistant=assistant, is_room=is_room)
    webhook_emit(
        team_id=team.pk,
        event=WebhookEvent.CONVERSATION_CREATED,
        payload={
            "conversation_id": conversation.pk,
            "assistant_id": assistant.pk,
            "owner_id": owner.pk,
            "is_room": is_room,
        },
    )
    return conversation


def conversation_update(
    *,
    conversation: Conversation,
    title: str | Unset = UNSET,
    assistant: Assistant | Unset = UNSET,
    is_room: bool | Unset = UNSET,
) -> Conversation:
    """Rename, switch assistant (one of the conversation's own team) or open it as a room."""
    if not isinstance(assistant, Unset):
        _check_assistant(conversation.team, assistant)
    changes = given(title=title, assistant=assistant, is_room=is_room)
    for key, value in changes.items():
        setattr(conversation, key, value)
    if changes:
        conversation.save(update_fields=[*changes, "updated_at"])
    return conversation


def conversation_files_kb(*, conversation: Conversation) -> KnowledgeBase:
    """The conversation's own knowledge base for dropped files, made on first use with the team's
    default embedding model; it goes when the conversation goes."""
    from kb.services import kb_create

    if conversation.file_knowledge_base is not None:
        return conversation.file_knowledge_base
    model = team_default_model(team=conversation.team, kind=ModelKind.EMBEDDING)
    if model is None:
        raise ChatError("file chat needs the team's default embedding model: set one first")
    with transaction.atomic():
        kb = kb_create(team=conversation.team, name=f"Files of conversation {conversation.pk}", embedding_model=model)
        conversation.file_knowledge_base = kb
        conversation.save(update_fields=["file_knowledge_base", "updated_at"])
    return kb


def conversation_delete(*, conversation: Conversation) -> None:
    from kb.services import kb_delete

    files_kb = conversation.file_knowledge_base
    conversation.delete()
    if files_kb is not None:
        kb_delete(kb=files_kb)


def room_message_post(*, conversation: Conversation, author: User, content: str) -> Message:
    """A member's message in a team room that does not address the assistant: kept in the
    history (and so in the next prompt and the summary), answered by nobody."""
    if not conversation.is_room:
        raise ChatError("only team rooms take messages that the assistant does not answer")
    if not content.strip():
        raise ChatError("the message is empty: write something")
    message = Message.objects.create(conversation=conversation, role=Message.Role.USER, author=author, content=content)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    transaction.on_commit(lambda: room_notify(conversation_id=conversation.pk, message_ids=[message.pk]))
    return message


def message_feedback(*, message: Message, value: int, comment: str = "") -> Message:
    if message.role != Message.Role.ASSISTANT:
        raise ChatError("feedback goes on the assistant's answers")
    if value not in (-1, 0, 1):
        raise ChatError("feedback is 1 (up), -1 (down) or 0 (none)")
    message.feedback = value
    message.feedback_comment = comment[:2000]
    message.save(update_fields=["feedback", "feedback_comment"])
    return message


# --- a turn -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class AnswerPlan:
    """What the model is asked and with which sources; shared by conversations and the stateless
    OpenAI-compatible API."""

    team_id: int
    user_id: int
    llm: ModelRegistration
    prompt: list[BaseMessage]
    sources: list[dict[str, Any]]
    max_tokens: int
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # run before the answer (SQL)
    tools: list[BaseTool] = field(default_factory=list)  # the model may call these (chat.engine)
    # Functions a /v1 client offers (OpenAI tool dicts): the model may ask for them, the client runs them.
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    retrieval_query: str = ""
    canned_answer: str | None = None  # said instead of calling the model (nothing found)
    reservation_id: int | None = None  # the quota held for the answer (accounts.quotas)

    @property
    def prompt_tokens(self) -> int:
        return estimate_prompt_tokens(message.content for message in self.prompt)


@dataclass(kw_only=True)
class PreparedTurn(AnswerPlan):
    conversation_id: int
    question_message_id: int
    assistant_message_id: int
    is_room: bool = False


@dataclass(frozen=True)
class Turn:
    """One earlier turn of a conversation, from the database or from an API request."""

    role: str  # "user" or "assistant"
    content: str


def _history(conversation: Conversation, before_id: int) -> list[Message]:
    return list(
        conversation.messages.filter(
            pk__gt=conversation.summarized_up_to,
            pk__lt=before_id,
            status__in=[MessageStatus.COMPLETE, MessageStatus.STOPPED],
        ).order_by("pk")
    )


def invoke_metered(
    *,
    llm: ModelRegistration,
    prompt: list[BaseMessage],
    max_tokens: int,
    team_id: int,
    user_id: int,
    temperature: float | None = None,
) -> BaseMessage:
    """One whole (not streamed) model call for the platform's own needs (summary, title, drafts),
    metered to the team and user it serves. `temperature`: the server's default unless given."""
    options: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        options["temperature"] = temperature
    answer = chat_model_for(llm).invoke(prompt, **options)
    usage = getattr(answer, "usage_metadata", None) or {}
    usage_record(
        team_id=team_id,
        user_id=user_id,
        model_name=llm.name,
        tokens_in=usage.get("input_tokens") or estimate_prompt_tokens(message.content for message in prompt),
        tokens_out=usage.get("output_tokens") or estimate_tokens(str(answer.content)),
    )
    return answer


def _source(index: int, hit: Hit) -> dict[str, Any]:
    return {
        "index": index,
        "chunk_id": hit.chunk_id,
        "document_id": hit.document_id,
        "document_name": hit.document_name,
        "knowledge_base_id": hit.knowledge_base_id,
        "snippet": hit.text[:SNIPPET_CHARS],
        "score": hit.score,
        "metadata": hit.metadata,
        "cited": False,
    }


def answer_plan(
    *,
    assistant: Assistant,
    knowledge_bases: list[KnowledgeBase],
    recent: list[Turn],
    question: str,
    summary: str,
    team_id: int,
    user_id: int,
    extra_system: str = "",
    max_tokens: int | None = None,
    previous_sql: tuple[str, str] | None = None,
) -> AnswerPlan:
    """Retrieval query (a follow-up with the previous question, chat.followups) → retrieve →
    prompt: system prompt, running summary, recent turns and the question, each within the
    assistant's budget, with numbered sources. The quota
    is checked before any model call and the answer's tokens reserved last (its size bounded by
    what the quota has left); the caller settles the reservation with answer_settle."""
    quota_check(team_id=team_id, user_id=user_id)
    query = question
    hits: list[Hit] = []
    tools = assistant_tools(
        specs=assistant.tools, knowledge_bases=knowledge_bases, data_sources=list(assistant.data_sources.all())
    )
    searches_itself = any(tool.name == "search_knowledge_base" for tool in tools)
    if knowledge_bases and not searches_itself:
        query = retrieval_query([turn.content for turn in recent if turn.role == Message.Role.USER], question)
        # The embedding model down raises ModelUnavailable (503) from the search itself.
        hits = kb_search(
            knowledge_bases=knowledge_bases,
            request=SearchRequest(
                query=query[:2000],
                top_k=assistant.top_k,
                mode=assistant.retrieval_mode,
                score_threshold=assistant.score_threshold,
                rerank_model=assistant.rerank_model,
            ),
        )
    sources = [_source(index, hit) for index, hit in enumerate(hits, start=1)]
    # With a `sql` tool the model queries when it decides to; without, every question is answered in SQL.
    has_sql_tool = any(tool.name == "query_database" for tool in tools)
    sql_call = None if has_sql_tool else _sql_call(assistant, question, previous_sql, team_id=team_id, user_id=user_id)
    system = assistant.system_prompt
    if extra_system:
        system = f"{system}\n\n{trim_to_budget(extra_system, assistant.recent_tokens)}"
    if sql_call is not None:
        system = f"{system}\n\n{trim_to_budget(sql_call.prompt_text(), assistant.recent_tokens)}"
    if sources:
        numbered = "\n\n".join(
            f"[{source['index']}] ({source['document_name']}) {hit.text}"
            for source, hit in zip(sources, hits, strict=True)
        )
        system = f"{system}\n\n{prompts.ANSWER_WITH_SOURCES.format(sources=numbered)}"
    prompt: list[BaseMessage] = [SystemMessage(system)]
    if summary:
        prompt.append(SystemMessage(prompts.SUMMARY_IN_PROMPT.format(summary=summary)))
    for turn in recent:
        text = trim_to_budget(turn.content, assistant.recent_tokens)
        prompt.append(HumanMessage(text) if turn.role == Message.Role.USER else AIMessage(text))
    prompt.append(HumanMessage(trim_to_budget(question, assistant.recent_tokens)))
    plan = AnswerPlan(
        team_id=team_id,
        user_id=user_id,
        llm=assistant.llm,
        prompt=prompt,
        sources=sources,
        max_tokens=min(max_tokens or assistant.max_answer_tokens, assistant.max_answer_tokens),
        tool_calls=[sql_call.as_json()] if sql_call is not None else [],
        tools=tools,
        retrieval_query=query if knowledge_bases and not searches_itself else "",
        canned_answer=prompts.NOTHING_FOUND
        if knowledge_bases and not hits and sql_call is None and not tools
        else None,
    )
    if plan.canned_answer is None:
        reservation = quota_reserve(
            team_id=team_id, user_id=user_id, prompt_tokens=plan.prompt_tokens, answer_tokens=plan.max_tokens
        )
        plan.reservation_id, plan.max_tokens = reservation.id, reservation.answer_tokens
    return plan


def _sql_call(
    assistant: Assistant, question: str, previous: tuple[str, str] | None, *, team_id: int, user_id: int
) -> SqlToolCall | None:
    """The statement an assistant with data sources runs for the question, or None without them."""
    sources = list(assistant.data_sources.all())
    if not sources:
        return None

    def write(prompt: list[BaseMessage], max_tokens: int) -> str:
        reply = invoke_metered(
            llm=assistant.llm, prompt=prompt, max_tokens=max_tokens, team_id=team_id, user_id=user_id
        )
        return str(reply.content)

    return sql_tool_call(write=write, sources=sources, question=question, previous=previous)


def _previous_sql(history: list[Message]) -> tuple[str, str] | None:
    """The conversation's last question answered in SQL and its statement, for a follow-up."""
    question = ""
    found: tuple[str, str] | None = None
    for message in history:
        if message.role == Message.Role.USER:
            question = message.content
        elif message.tool_calls and message.tool_calls[0].get("sql"):
            found = (question, message.tool_calls[0]["sql"])
    return found


def answer_settle(*, plan: AnswerPlan, called_model: bool, prompt_tokens: int, completion_tokens: int) -> None:
    """Settle the quota `answer_plan` reserved: the model's work metered, or the hold released
    when the model wrote nothing (a canned answer, a model that failed before its first token)."""
    if called_model:
        usage_record(
            team_id=plan.team_id,
            user_id=plan.user_id,
            model_name=plan.llm.name,
            tokens_in=prompt_tokens,
            tokens_out=completion_tokens,
            reservation_id=plan.reservation_id,
        )
    else:
        quota_release(reservation_id=plan.reservation_id)


def turn_prepare(*, conversation: Conversation, author: User, content: str, regenerate: bool = False) -> PreparedTurn:
    """Save the question (or reuse the last one to regenerate), plan the answer, and create the
    assistant's message in `streaming` state."""
    conversation = Conversation.objects.select_related("assistant__llm__provider", "team").get(pk=conversation.pk)
    assistant = conversation.assistant
    if regenerate:
        last_user = conversation.messages.filter(role=Message.Role.USER).order_by("-pk").first()
        if last_user is None:
            raise ChatError("there is no question to answer again")
        conversation.messages.filter(role=Message.Role.ASSISTANT, pk__gt=last_user.pk).delete()
        question = last_user
    else:
        if not content.strip():
            raise ChatError("the message is empty: write something")
        question = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, author=author, content=content
        )
    history = _history(conversation, before_id=question.pk)
    recent = history[-recent_window(history, assistant.recent_tokens) :] if history else []
    knowledge_bases = list(assistant.knowledge_bases.select_related("embedding_model__provider"))
    if conversation.file_knowledge_base is not None:
        knowledge_bases.append(conversation.file_knowledge_base)
    plan = answer_plan(
        assistant=assistant,
        knowledge_bases=knowledge_bases,
        recent=[Turn(role=turn.role, content=turn.content) for turn in recent],
        question=question.content,
        summary=conversation.summary,
        team_id=conversation.team_id,
        user_id=author.pk,
        previous_sql=_previous_sql(history),
    )
    answer = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=MessageStatus.STREAMING,
        citations=plan.sources,
        tool_calls=plan.tool_calls,
        retrieval_query=plan.retrieval_query,
        model_name=assistant.llm.name,
    )
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return PreparedTurn(
        **{field.name: getattr(plan, field.name) for field in fields(AnswerPlan)},
        conversation_id=conversation.pk,
        question_message_id=question.pk,
        assistant_message_id=answer.pk,
        is_room=conversation.is_room,
    )


def mark_citations(sources: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    """Flag the sources the answer cites as [n]; numbers outside the given sources are ignored."""
    cited = {int(number) for number in CITATION.findall(answer)}
    return [{**source, "cited": source["index"] in cited} for source in sources]


def turn_finish(
    *,
    turn: PreparedTurn,
    content: str,
    status: str,
    error: str = "",
    time_to_first_token_ms: int | None = None,
    total_ms: int | None = None,
    completion_tokens: int | None = None,
    prompt_tokens: int | None = None,
    metered: bool | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> Message:
    """Save the answer as it ended (complete, stopped, failed), meter usage, and schedule the
    summary and title work."""
    tokens_out = completion_tokens if completion_tokens is not None else estimate_tokens(content)
    tokens_in = prompt_tokens if prompt_tokens is not None else turn.prompt_tokens
    # `metered`: the engine knows whether the model wrote anything (chat.engine.AnswerOutcome).
    called_model = metered if metered is not None else turn.canned_answer is None and status != MessageStatus.FAILED
    Message.objects.filter(pk=turn.assistant_message_id).update(
        content=content,
        status=status,
        error=error,
        citations=mark_citations(turn.sources, content),
        tool_calls=tool_calls if tool_calls is not None else turn.tool_calls,
        prompt_tokens=tokens_in if called_model else 0,
        completion_tokens=tokens_out if called_model else 0,
        time_to_first_token_ms=time_to_first_token_ms,
        total_ms=total_ms,
    )
    answer_settle(plan=turn, called_model=called_model, prompt_tokens=tokens_in, completion_tokens=tokens_out)
    if status != MessageStatus.FAILED:
        # Robust: the answer is saved; a broker that is down costs this turn's title or summary
        # (logged), and the next turn asks for them again.
        transaction.on_commit(lambda: _after_turn(turn.conversation_id), robust=True)
    if turn.is_room:
        # However the turn came (the room's socket, the REST API, SSE), the room shows it live.
        message_ids = [turn.question_message_id, turn.assistant_message_id]
        transaction.on_commit(lambda: room_notify(conversation_id=turn.conversation_id, message_ids=message_ids))
    message = Message.objects.get(pk=turn.assistant_message_id)
    if status == MessageStatus.COMPLETE:
        webhook_emit(team_id=turn.team_id, event=WebhookEvent.MESSAGE_COMPLETED, payload=_completed_payload(message))
    return message


def _completed_payload(message: Message) -> dict[str, Any]:
    return {
        "conversation_id": message.conversation_id,
        "message_id": message.pk,
        "content": message.content,
        "model": message.model_name,
        "citations": [source for source in message.citations if source.get("cited")],
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
    }


def _after_turn(conversation_id: int) -> None:
    from chat.tasks import summarize, title

    conversation = Conversation.objects.select_related("assistant").get(pk=conversation_id)
    history = _history(conversation, before_id=2**62)
    if sum(estimate_tokens(turn.content) + 4 for turn in history) > conversation.assistant.recent_tokens:
        summarize.delay(conversation_id)
    if not conversation.title:
        title.delay(conversation_id)


def turn_discard(*, turn: PreparedTurn, called_model: bool, prompt_tokens: int, completion_tokens: int) -> None:
    """A turn whose answer failed where the client waits for it whole (the non-streaming API): the
    client gets a 503 and no answer, so no answer is kept (the question stays: regenerate answers
    it). What the model wrote before it failed was work done, and is metered."""
    Message.objects.filter(pk=turn.assistant_message_id).delete()
    answer_settle(
        plan=turn, called_model=called_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


# --- memory and titles (Celery, llm queue) -----------------------------------------------------


def conversation_summarize(*, conversation_id: int) -> bool:
    """Fold the turns older than the recent window into the running summary. The row lock makes
    two runs at once safe: the second finds nothing left to fold. True when it folded."""
    with transaction.atomic():
        conversation = (
            Conversation.objects.select_for_update()
            .select_related("assistant__llm__provider")
            .filter(pk=conversation_id)
            .first()
        )
        if conversation is None:
            return False
        history = _history(conversation, before_id=2**62)
        keep = recent_window(history, conversation.assistant.recent_tokens // 2)
        fold = history[: len(history) - keep]
        if not fold:
            return False
        words = max(40, conversation.assistant.summary_tokens * 3 // 4)
        turns = "\n".join(f"{turn.role}: {turn.content}" for turn in fold)
        existing = conversation.summary or "(none yet)"
        answer = invoke_metered(
            llm=conversation.assistant.llm,
            prompt=[
                SystemMessage(prompts.SUMMARY_SYSTEM.format(words=words)),
                HumanMessage(f"Existing summary:\n{existing}\n\nNew turns:\n{turns}"),
            ],
            max_tokens=conversation.assistant.summary_tokens,
            team_id=conversation.team_id,
            user_id=conversation.owner_id,
        )
        summary = str(answer.content).strip() or conversation.summary
        conversation.summary = trim_to_budget(summary, conversation.assistant.summary_tokens)
        conversation.summarized_up_to = fold[-1].pk
        conversation.save(update_fields=["summary", "summarized_up_to", "updated_at"])
    return True


def conversation_title(*, conversation_id: int) -> None:
    conversation = Conversation.objects.select_related("assistant__llm__provider").filter(pk=conversation_id).first()
    if conversation is None or conversation.title:
        return
    first = conversation.messages.filter(role=Message.Role.USER).order_by("pk").first()
    if first is None:
        return
    fallback = first.content.strip().splitlines()[0][:60] if first.content.strip() else "Conversation"
    try:
        answer = invoke_metered(
            llm=conversation.assistant.llm,
            prompt=[SystemMessage(prompts.TITLE_SYSTEM), HumanMessage(first.content[:1000])],
            max_tokens=16,
            team_id=conversation.team_id,
            user_id=conversation.owner_id,
        )
        proposed = str(answer.content).strip().strip('"').splitlines()[0][:80] if str(answer.content).strip() else ""
    except Exception:  # a title is a nicety: fall back to the question's start
        logger.warning("title generation failed for conversation %s", conversation_id, exc_info=True)
        proposed = ""
    Conversation.objects.filter(pk=conversation_id, title="").update(title=proposed or fallback)
