"""`python manage.py create_api_key USERNAME [--team SLUG] [--name NAME]`: prints a new key once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.models import Membership, Scope, Team, User
from accounts.services import AccountsError, api_key_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME in one of their teams and print it (it is not shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--team", help="team slug; needed when the user belongs to several teams")
        parser.add_argument("--name", default="cli", help="a label to recognise the key by")
        parser.add_argument(
            "--scopes",
            default="read,write,chat",
            help=f"comma-separated, from {', '.join(Scope.values)} (default: read,write,chat)",
        )
        parser.add_argument("--expires-days", type=int, default=None, help="days until the key expires")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        team = self._team(user, options["team"])
        expires_at = None
        if options["expires_days"] is not None:
            expires_at = timezone.now() + timedelta(days=options["expires_days"])
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        try:
            _key, secret = api_key_create(
                user=user, team=team, name=options["name"], scopes=scopes, expires_at=expires_at
            )
        except AccountsError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(secret)

    def _team(self, user: User, slug: str | None) -> Team:
        if slug:
            team = Team.objects.filter(slug=slug).first()
            if team is None:
                raise CommandError(f"no team with the slug {slug!r}")
            return team
        memberships = list(Membership.objects.filter(user=user).select_related("team")[:2])
        if not memberships:
            raise CommandError(f"{user.username} belongs to no team: add them to one first")
        if len(memberships) > 1:
            raise CommandError(f"{user.username} belongs to several teams: say which with --team SLUG")
        return memberships[0].team
