"""Server-rendered pages: a read-only overview for people; writes go through the admin or API."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from registry.models import RegisteredModel


@login_required
def home(request: HttpRequest) -> HttpResponse:
    models = (RegisteredModel.objects.annotate(num_versions=Count("versions"), latest=Max("versions__number"))
              .select_related("owner").prefetch_related("tags", "aliases__version"))
    return render(request, "registry/home.html", {"models": models})


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
