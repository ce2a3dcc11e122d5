"""/api/v1/assistants/, /api/v1/conversations/ (+ messages/, stop/, regenerate/, files/) and
/api/v1/messages/{id}/feedback/."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, Role, Scope, User
from accounts.selectors import has_team_role, team_scoped
from chat.models import Assistant, Conversation, Message, MessageStatus
from chat.selectors import assistants_visible, conversations_visible, messages_visible
from chat.services import (
    assistant_create,
    assistant_default_for,
    assistant_update,
    conversation_create,
    conversation_delete,
    conversation_files_kb,
    conversation_update,
    message_feedback,
    turn_prepare,
)
from chat.streaming import event_stream_response, request_stop, turn_answer
from chat.tools import tool_specs_shown
from core.domain_errors import DomainError
from datasources.models import DataSource
from kb.models import KnowledgeBase
from kb.selectors import knowledge_bases_visible
from kb.services import documents_upload
from models_registry.models import ModelRegistration
from restapi.async_views import body_asks_for_stream, drf_request_through, stream_or_rest
from restapi.errors import api_error_response
from restapi.pagination import IdCursorPagination
from restapi.serializers import StrictFieldsMixin
from restapi.viewsets import TeamScopedModelViewSet

MAX_MESSAGE_CHARS = 32_000


class ToolSpecsField(serializers.JSONField):
    """An assistant's tools (chat.tools): checked by the service; header values shown as ***."""

    def to_representation(self, value: Any) -> Any:
        return tool_specs_shown(value or [])


class AssistantSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """References resolve among what the caller sees (another team's id is "not found", like a
    missing one); chat.services checks they are the assistant's own team's and of the right kind."""

    team = serializers.IntegerField(source="team_id", required=False, help_text="Set on create only.")
    llm = serializers.PrimaryKeyRelatedField(queryset=ModelRegistration.objects.none())
    rerank_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelRegistration.objects.none(), required=False, allow_null=True
    )
    knowledge_bases = serializers.PrimaryKeyRelatedField(
        many=True, queryset=KnowledgeBase.objects.none(), required=False
    )
    data_sources = serializers.PrimaryKeyRelatedField(many=True, queryset=DataSource.objects.none(), required=False)
    tools = ToolSpecsField(
        required=False,
        help_text='Tool specs: {"type": "knowledge_base_search"}, {"type": "sql"}, {"type": "http", "name", '
        '"openapi_url", "headers"?}, {"type": "mcp", "name", "url", "headers"?} or {"type": "mcp", "name", "server"}.',
    )

    class Meta:
        model = Assistant
        fields = [
            "id",
            "team",
            "name",
            "llm",
            "knowledge_bases",
            "data_sources",
            "tools",
            "system_prompt",
            "retrieval_mode",
            "top_k",
            "score_threshold",
            "rerank_model",
            "recent_tokens",
            "summary_tokens",
            "max_answer_tokens",
            "created_at",
        ]
        read_only_fields = ["created_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            api_key = request.auth if isinstance(request.auth, ApiKey) else None
            models = team_scoped(ModelRegistration.objects.all(), user=request.user, api_key=api_key)
            self.fields["llm"].queryset = models
            self.fields["rerank_model"].queryset = models
            self.fields["knowledge_bases"].child_relation.queryset = knowledge_bases_visible(
                user=request.user, api_key=api_key
            )
            self.fields["data_sources"].child_relation.queryset = team_scoped(
                DataSource.objects.all(), user=request.user, api_key=api_key
            )

    def validate_team(self, team_id: int) -> int:
        if self.instance is not None and team_id != self.instance.team_id:
            raise serializers.ValidationError("An assistant cannot move to another team: create it there.")
        return team_id


class AssistantViewSet(TeamScopedModelViewSet):
    queryset = Assistant.objects.prefetch_related("knowledge_bases", "data_sources")
    serializer_class = AssistantSerializer
    action_roles = {action: Role.ADMIN for action in ("update", "partial_update", "destroy")}

    def perform_create(self, serializer: serializers.BaseSerializer[Assistant]) -> None:
        data = dict(serializer.validated_data)
        team = self.target_team(data.pop("team_id", None), Role.ADMIN)
        serializer.instance = assistant_create(team=team, **data)

    def perform_update(self, serializer: serializers.BaseSerializer[Assistant]) -> None:
        assistant = serializer.instance
        assert assistant is not None
        data = dict(serializer.validated_data)
        data.pop("team_id", None)  # validate_team refused a change
        serializer.instance = assistant_update(assistant=assistant, **data)


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "role",
            "author",
            "content",
            "status",
            "error",
            "citations",
            "tool_calls",
            "retrieval_query",
            "model_name",
            "prompt_tokens",
            "completion_tokens",
            "time_to_first_token_ms",
            "total_ms",
            "feedback",
            "feedback_comment",
            "created_at",
        ]
        read_only_fields = fields


class ConversationSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id", required=False, help_text="Set on create only.")
    assistant = serializers.PrimaryKeyRelatedField(queryset=Assistant.objects.all(), required=False)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "team",
            "owner",
            "assistant",
            "title",
            "is_room",
            "summary",
            "summarized_up_to",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["owner", "summary", "summarized_up_to", "created_at", "updated_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            api_key = request.auth if isinstance(request.auth, ApiKey) else None
            self.fields["assistant"].queryset = assistants_visible(user=request.user, api_key=api_key)

    def validate_team(self, team_id: int) -> int:
        if self.instance is not None and team_id != self.instance.team_id:
            raise serializers.ValidationError("A conversation cannot move to another team: start one there.")
        return team_id


class ConversationViewSet(TeamScopedModelViewSet):
    queryset = Conversation.objects.select_related("assistant")
    serializer_class = ConversationSerializer
    filterset_fields = ["team", "assistant", "is_room"]
    action_roles = {"files": Role.MEMBER, "stop": Role.MEMBER}

    def get_queryset(self) -> QuerySet[Conversation]:
        return conversations_visible(
            user=self.request.user, api_key=self.api_key, queryset=Conversation.objects.select_related("assistant")
        )

    def perform_create(self, serializer: serializers.BaseSerializer[Conversation]) -> None:
        data = serializer.validated_data
        team = self.target_team(data.get("team_id"), Role.MEMBER)
        assistant = data.get("assistant") or assistant_default_for(team=team)
        serializer.instance = conversation_create(
            team=team, owner=acting_user(self.request), assistant=assistant, is_room=data.get("is_room", False)
        )

    def perform_update(self, serializer: serializers.BaseSerializer[Conversation]) -> None:
        conversation = serializer.instance
        assert conversation is not None
        self._require_owner(conversation)
        data = dict(serializer.validated_data)
        data.pop("team_id", None)  # validate_team refused a change
        serializer.instance = conversation_update(conversation=conversation, **data)

    def perform_destroy(self, instance: Conversation) -> None:
        self._require_owner(instance)
        conversation_delete(conversation=instance)

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        responses={
            201: inline_serializer(
                "ConversationFiles", {"documents": serializers.ListField(), "rejected": serializers.ListField()}
            )
        },
    )
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser, FormParser])
    def files(self, request: Request, pk: str | None = None) -> Response:
        """File chat: files dropped into the conversation are searched with its questions."""
        conversation = self.get_object()
        uploads = request.FILES.getlist("file")
        if not uploads:
            raise exceptions.ValidationError({"file": "Attach one or more files in the multipart field `file`."})
        kb = conversation_files_kb(conversation=conversation)
        result = documents_upload(kb=kb, uploads=[(upload, upload.name or "") for upload in uploads])
        documents = [
            {"id": d.pk, "original_name": d.original_name, "status": d.status}
            for d in [*result.created, *result.duplicates]
        ]
        rejected_body = [{"name": item.name, "reason": item.reason} for item in result.rejected]
        code = status.HTTP_201_CREATED if documents else status.HTTP_400_BAD_REQUEST
        return Response({"documents": documents, "rejected": rejected_body}, status=code)

    def _require_owner(self, conversation: Conversation) -> None:
        if conversation.owner_id != self.request.user.pk:
            self.require_role(conversation.team_id, Role.ADMIN)

    @extend_schema(request=None, responses=inline_serializer("Stopped", {"stopped": serializers.IntegerField()}))
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Stop the answer being written; what was written so far is kept."""
        conversation = self.get_object()
        streaming = conversation.messages.filter(status=MessageStatus.STREAMING).values_list("pk", flat=True)
        for message_id in streaming:
            request_stop(message_id)
        return Response({"stopped": len(streaming)})


class MessageInputSerializer(StrictFieldsMixin, serializers.Serializer):
    content = serializers.CharField(max_length=MAX_MESSAGE_CHARS, allow_blank=False, trim_whitespace=False)
    stream = serializers.BooleanField(default=False)


class ConversationMessagesView(GenericAPIView[Message]):
    """GET the messages (cursor pagination); POST a question and get the answer, or with
    `"stream": true` (or `Accept: text/event-stream`) Server-Sent Events: `sources`, `token`,
    `usage`, `error`, `done`."""

    serializer_class = MessageSerializer
    pagination_class = IdCursorPagination
    queryset = Message.objects.none()  # for the schema; rows come from conversation_for()
    required_scopes = {"POST": Scope.CHAT}

    @extend_schema(responses=MessageSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        conversation = conversation_for(request, pk)
        paginator = IdCursorPagination()
        paginator.ordering = "pk"
        page = paginator.paginate_queryset(conversation.messages.all(), request, view=self)
        return paginator.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(request=MessageInputSerializer, responses={201: MessageSerializer})
    def post(self, request: Request, pk: int) -> Response:
        conversation = conversation_for(request, pk, to_chat=True)
        data = MessageInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        turn = turn_prepare(
            conversation=conversation, author=acting_user(request), content=data.validated_data["content"]
        )
        return Response(MessageSerializer(turn_answer(turn=turn)).data, status=status.HTTP_201_CREATED)


class RegenerateView(APIView):
    required_scope = Scope.CHAT

    @extend_schema(request=None, responses={201: MessageSerializer})
    def post(self, request: Request, pk: int) -> Response:
        conversation = conversation_for(request, pk, to_chat=True)
        turn = turn_prepare(conversation=conversation, author=acting_user(request), content="", regenerate=True)
        return Response(MessageSerializer(turn_answer(turn=turn)).data, status=status.HTTP_201_CREATED)


def acting_user(request: Request) -> User:
    assert isinstance(request.user, User)  # every view here requires authentication
    return request.user


def conversation_for(request: Request, pk: int, *, to_chat: bool = False) -> Conversation:
    """A conversation the caller sees; chatting in it also needs the member role (viewers read
    rooms, they do not write in them). The API key's `chat` scope is the view's permission
    (required_scopes; drf_request_through on the streaming path)."""
    api_key = request.auth if isinstance(request.auth, ApiKey) else None
    conversation = conversations_visible(user=request.user, api_key=api_key).filter(pk=pk).first()
    if conversation is None:
        raise exceptions.NotFound("No such conversation.")
    if to_chat:
        require_member(request, conversation.team_id)
    return conversation


def require_member(request: Request, team_id: int) -> None:
    api_key = request.auth if isinstance(request.auth, ApiKey) else None
    if not has_team_role(user=request.user, api_key=api_key, team_id=team_id, role=Role.MEMBER):
        raise exceptions.PermissionDenied(
            "Viewers cannot chat or give feedback: ask a team admin to make you a member."
        )


class FeedbackSerializer(StrictFieldsMixin, serializers.Serializer):
    value = serializers.ChoiceField(choices=[-1, 0, 1])
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class FeedbackView(APIView):
    required_scope = Scope.CHAT  # feedback is part of chatting, as the member role it needs

    @extend_schema(request=FeedbackSerializer, responses=MessageSerializer)
    def post(self, request: Request, pk: int) -> Response:
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        message = messages_visible(user=request.user, api_key=api_key).filter(pk=pk).first()
        if message is None:
            raise exceptions.NotFound("No such message.")
        require_member(request, message.conversation.team_id)
        data = FeedbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        message = message_feedback(
            message=message, value=data.validated_data["value"], comment=data.validated_data["comment"]
        )
        return Response(MessageSerializer(message).data)


# --- the streaming entry point ----------------------------------------------------------------


def _error(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, "details": {}}}, status=status_code)


def _prepare_streaming_turn(request: HttpRequest, pk: int, regenerate: bool) -> Any:
    """Authenticate as the REST view does (drf_request_through), check the body, and prepare the
    turn; returns a PreparedTurn or an error response."""
    try:
        drf_request = drf_request_through(RegenerateView if regenerate else ConversationMessagesView, request, pk=pk)
    except exceptions.APIException as exc:
        return api_error_response(exc)
    user = drf_request.user
    content = ""
    if not regenerate:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _error(400, "invalid", 'The body is not valid JSON: send {"content": "...", "stream": true}.')
        data = MessageInputSerializer(data=body)
        if not data.is_valid():
            return api_error_response(exceptions.ValidationError(data.errors))
        content = data.validated_data["content"]
    try:
        conversation = conversation_for(drf_request, pk, to_chat=True)
        assert isinstance(user, User)
        return turn_prepare(conversation=conversation, author=user, content=content, regenerate=regenerate)
    except exceptions.APIException as exc:
        return api_error_response(exc)
    except DomainError as exc:
        return _error(exc.status_code, exc.code, str(exc))


def _wants_stream(request: HttpRequest) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "") or body_asks_for_stream(request)


async def _stream_answer(request: HttpRequest, pk: int) -> HttpResponseBase:
    prepared = await sync_to_async(_prepare_streaming_turn)(request, pk, False)
    return prepared if isinstance(prepared, HttpResponse) else event_stream_response(prepared)


async def _stream_regenerated(request: HttpRequest, pk: int) -> HttpResponseBase:
    prepared = await sync_to_async(_prepare_streaming_turn)(request, pk, True)
    return prepared if isinstance(prepared, HttpResponse) else event_stream_response(prepared)


# POST with `"stream": true` (or Accept: text/event-stream) answers as Server-Sent Events;
# everything else is the plain REST view.
conversation_messages = stream_or_rest(ConversationMessagesView, _wants_stream, _stream_answer)
conversation_regenerate = stream_or_rest(RegenerateView, _wants_stream, _stream_regenerated)
