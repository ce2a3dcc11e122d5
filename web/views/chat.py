"""The chat pages: conversation list with search, new chat with an assistant picker, a
conversation (its messages rendered server-side, new answers streamed by chat.js from the REST
API), sources, and the summary. Team rooms are conversations with `is_room`; room.js adds the
live WebSocket."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Q, QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.models import Role, User
from accounts.selectors import has_team_role
from chat.models import Assistant, Conversation, Message
from chat.selectors import conversations_visible
from chat.services import ChatError, assistant_default_for, conversation_create
from evaluation.models import EvaluationSet
from kb.models import Chunk
from kb.selectors import chunks_visible, documents_visible
from web.markdown import render_markdown
from web.sql_chart import sql_result_chart
from web.teams import current_membership, team_switch
from web.views.evaluation import answer_evaluation_sets

CONVERSATIONS_SHOWN = 100
NEIGHBOUR_CHUNKS = 2


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # every view here is login_required
    return request.user


def _conversations(request: HttpRequest) -> QuerySet[Conversation]:
    return conversations_visible(user=_user(request))


def _sidebar(request: HttpRequest, team_id: int) -> dict[str, Any]:
    query = request.GET.get("q", "").strip()
    conversations = _conversations(request).filter(team_id=team_id)
    if query:
        matching_messages = Message.objects.filter(content__icontains=query).values("conversation_id")
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=matching_messages))
    assistants = Assistant.objects.filter(team_id=team_id).order_by("name")
    return {
        "conversations": conversations.order_by("-updated_at")[:CONVERSATIONS_SHOWN],
        "query": query,
        "assistants": assistants,
    }


def citation_urls(message: Message) -> dict[int, str]:
    return {source["index"]: reverse("web:chunk", args=[source["chunk_id"]]) for source in message.citations}


def _shown_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A saved tool call as the page shows it: SQL with its table and chart, others with their arguments."""
    if call.get("tool") == "sql":
        return {**call, "chart": sql_result_chart(call["columns"], call["rows"])}
    return {**call, "arguments_json": json.dumps(call.get("arguments", {}), ensure_ascii=False, indent=2)}


def message_context(message: Message, eval_sets: Sequence[EvaluationSet] = ()) -> dict[str, Any]:
    """`eval_sets`: for a team admin's own page, the sets this answer may be added to once marked
    good (web.views.evaluation); a room's broadcast, rendered once for everyone, has none."""
    html = render_markdown(message.content, citation_urls(message)) if message.role == Message.Role.ASSISTANT else ""
    tool_calls = [_shown_tool_call(call) for call in message.tool_calls]
    return {"message": message, "html": html, "eval_sets": eval_sets, "tool_calls": tool_calls}


@login_required
def chat_home(request: HttpRequest) -> HttpResponse:
    membership = current_membership(request)
    context = _sidebar(request, membership.team_id)
    context["can_write"] = membership.has_role(Role.MEMBER)
    return render(request, "web/chat/home.html", context)


@login_required
@require_POST
def conversation_new(request: HttpRequest) -> HttpResponse:
    membership = current_membership(request)
    if not membership.has_role(Role.MEMBER):
        return HttpResponse(_("Viewers cannot start conversations: ask a team admin to make you a member."), status=403)
    team = membership.team
    assistant_id = request.POST.get("assistant", "")
    try:
        if assistant_id:
            assistant = Assistant.objects.filter(team=team, pk=int(assistant_id)).first()
            if assistant is None:
                return HttpResponseBadRequest(_("Choose an assistant of this team."))
        else:
            assistant = assistant_default_for(team=team)
    except ValueError:
        return HttpResponseBadRequest(_("Choose an assistant of this team."))
    except ChatError as exc:
        return HttpResponseBadRequest(str(exc))
    conversation = conversation_create(
        team=team, owner=_user(request), assistant=assistant, is_room=request.POST.get("is_room") == "on"
    )
    return redirect("web:conversation", conversation.pk)


@login_required
def conversation_page(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = _conversations(request).select_related("assistant", "team").filter(pk=pk).first()
    if conversation is None:
        raise Http404(_("No such conversation."))
    if current_membership(request).team_id != conversation.team_id:
        team_switch(request, conversation.team_id)  # a link from another team's room
    messages = list(conversation.messages.select_related("author").order_by("pk"))
    eval_sets = answer_evaluation_sets(user=_user(request), team_id=conversation.team_id, answers=messages)
    context = _sidebar(request, conversation.team_id)
    context.update(
        conversation=conversation,
        # Not `messages`: base.html shows Django's messages framework under that name.
        conversation_messages=[message_context(message, eval_sets.get(message.pk, ())) for message in messages],
        last_message_id=messages[-1].pk if messages else 0,
        can_write=has_team_role(user=_user(request), api_key=None, team_id=conversation.team_id, role=Role.MEMBER),
    )
    return render(request, "web/chat/conversation.html", context)


@login_required
def message_fragment(request: HttpRequest, pk: int) -> HttpResponse:
    """One message as the conversation page shows it: chat.js swaps it in when a stream ends."""
    message = (
        Message.objects.filter(pk=pk, conversation__in=_conversations(request))
        .select_related("author", "conversation")
        .first()
    )
    if message is None:
        raise Http404(_("No such message."))
    eval_sets = answer_evaluation_sets(user=_user(request), team_id=message.conversation.team_id, answers=[message])
    return render(request, "web/chat/message.html", message_context(message, eval_sets.get(message.pk, ())))


@login_required
def summary_fragment(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = _conversations(request).filter(pk=pk).first()
    if conversation is None:
        raise Http404(_("No such conversation."))
    return render(request, "web/chat/summary.html", {"conversation": conversation})


def _visible_chunk(request: HttpRequest, chunk_id: int) -> Chunk:
    """A chunk of the user's teams; one from a conversation's dropped files only for those who
    see that conversation."""
    chunk = chunks_visible(user=_user(request)).select_related("document", "knowledge_base").filter(pk=chunk_id).first()
    if chunk is None:
        raise Http404(_("No such source."))
    return chunk


@login_required
def chunk_page(request: HttpRequest, chunk_id: int) -> HttpResponse:
    """A cited source: the chunk with its neighbours in the document, and a link to the file."""
    chunk = _visible_chunk(request, chunk_id)
    neighbours = Chunk.objects.filter(
        document_id=chunk.document_id,
        generation=chunk.generation,
        ordinal__gte=chunk.ordinal - NEIGHBOUR_CHUNKS,
        ordinal__lte=chunk.ordinal + NEIGHBOUR_CHUNKS,
    ).order_by("ordinal")
    return render(
        request, "web/chat/chunk.html", {"chunk": chunk, "document": chunk.document, "neighbours": neighbours}
    )


@login_required
def document_file(request: HttpRequest, document_id: int) -> FileResponse:
    """The original file, always as a download: an uploaded HTML file must not run as a page of
    the platform."""
    document = documents_visible(user=_user(request)).filter(pk=document_id).first()
    if document is None or not document.file:
        raise Http404(_("No such document."))
    response = FileResponse(
        document.file.open("rb"),
        as_attachment=True,
        filename=document.original_name,
        content_type="application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response
