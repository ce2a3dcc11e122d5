"""Knowledge-base pages: list and create, upload with live progress, hit testing."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def kb_list(request: HttpRequest) -> HttpResponse:
    return render(request, "web/kb/list.html", {})
