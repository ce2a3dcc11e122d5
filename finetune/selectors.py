"""Whose conversations a dataset may hold, and who may see a dataset.

A conversation is personal (its owner's) or a team room (every member takes part). The rule:
- a member builds from the conversations they own (personal, and rooms they opened);
- an admin or owner builds from every team room, their own conversations, and the personal
  conversations of current members whose role is below theirs: an admin's dataset leaves out
  other admins' and the owners' personal conversations, an owner's leaves out other owners';
  personal conversations of people who have left the team are never included;
- viewers do not build.
A dataset is seen by its creator and by members whose role is above the role it was built with
(and at least admin): nobody reads, through a dataset, a conversation they could not have
exported themselves. Gold answers follow the build rule: an admin reviews the answers of the
conversations they could build from."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import OuterRef, Q, QuerySet, Subquery

from accounts.models import ROLE_RANK, ApiKey, Membership, Role, Team, User
from accounts.selectors import team_ids_for, team_scoped
from chat.models import Conversation, Message
from finetune.models import Adapter, Comparison, Dataset


def role_in(*, team: Team | int, user: User) -> Role | None:
    team_id = team if isinstance(team, int) else team.pk
    role = Membership.objects.filter(team_id=team_id, user=user).values_list("role", flat=True).first()
    return Role(role) if role else None


def roles_below(role: Role) -> list[Role]:
    return [other for other, rank in ROLE_RANK.items() if rank < ROLE_RANK[role]]


def conversations_in_scope(*, team: Team, user: User, role: Role) -> QuerySet[Conversation]:
    """The team's conversations that `user`, holding `role`, may build datasets from."""
    own = Q(owner=user)
    if ROLE_RANK[role] < ROLE_RANK[Role.ADMIN]:
        return Conversation.objects.filter(own, team=team) if role == Role.MEMBER else Conversation.objects.none()
    lower_members = Membership.objects.filter(team=team, role__in=roles_below(role)).values("user_id")
    return Conversation.objects.filter(own | Q(is_room=True) | Q(owner__in=lower_members), team=team)


def datasets_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Dataset]:
    rows = team_scoped(Dataset.objects.all(), user=user, api_key=api_key)
    if user is None or not user.is_authenticated:
        return rows.none()
    visible = Q(created_by=user)
    for role in (Role.ADMIN, Role.OWNER):
        teams = team_ids_for(user=user, api_key=api_key, minimum_role=role)
        visible |= Q(team__in=teams, builder_role__in=roles_below(role))
    return rows.filter(visible)


def answer_for_review(*, user: User, api_key: ApiKey | None, message_id: int) -> Message | None:
    """The message, if it is in one of the actor's teams (None otherwise: 404); whether they may
    review it is the caller's next question (`reviewable`)."""
    return (
        team_scoped(Message.objects.all(), user=user, api_key=api_key, team_field="conversation__team")
        .select_related("conversation__team")
        .filter(pk=message_id)
        .first()
    )


def reviewable(*, message: Message, user: User, role: Role) -> bool:
    conversation = message.conversation
    return conversations_in_scope(team=conversation.team, user=user, role=role).filter(pk=conversation.pk).exists()


REVIEW_FILTERS = ("any", "up", "down", "gold")


def answers_to_review(*, team: Team, user: User, role: Role, feedback: str = "any") -> QuerySet[Message]:
    """The assistant answers `user` may review in `team` (those of the conversations they could
    build from), newest first, each with `question`: the conversation's last user message before
    it, as a dataset pairs them. `feedback`: any, up (👍), down (👎) or gold (has a gold answer)."""
    question = Message.objects.filter(
        conversation_id=OuterRef("conversation_id"), role=Message.Role.USER, pk__lt=OuterRef("pk")
    ).order_by("-pk")
    answers = (
        Message.objects.filter(
            conversation__in=conversations_in_scope(team=team, user=user, role=role), role=Message.Role.ASSISTANT
        )
        .annotate(question=Subquery(question.values("content")[:1]))
        .select_related("gold_answer__reviewed_by", "conversation__owner")
        .order_by("-pk")
    )
    if feedback == "up":
        return answers.filter(feedback__gt=0)
    if feedback == "down":
        return answers.filter(feedback__lt=0)
    if feedback == "gold":
        return answers.filter(gold_answer__isnull=False)
    return answers


def adapters_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Adapter]:
    """Every member sees the team's adapters (each is a model in the registry, seen there too)."""
    return team_scoped(
        Adapter.objects.select_related("registration", "base_model", "dataset"), user=user, api_key=api_key
    )


def comparisons_visible(*, user: User | AnonymousUser | None, api_key: ApiKey | None = None) -> QuerySet[Comparison]:
    """A comparison shows held-back questions and answers of the dataset's conversations: it is
    seen by those who see the dataset (none, once the dataset is deleted)."""
    return team_scoped(Comparison.objects.all(), user=user, api_key=api_key).filter(
        adapter__dataset__in=datasets_visible(user=user, api_key=api_key)
    )
