"""The views: two metered by the routes in settings.USAGEFLOW, one by ``@metered``."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse

from usageflow import metered
from usageflow.context import current_user_id


def user_id(request: HttpRequest) -> str | None:
    """The user of a request: here the ``X-User-Id`` header (replace with your auth; without
    a ``user_id`` setting the middleware uses Django's ``request.user``)."""
    return request.headers.get("x-user-id")


def is_health_check(request: HttpRequest) -> bool:
    return request.path == "/health"


def export(request: HttpRequest) -> JsonResponse:
    """Metered by the route named "exports": 1 design-export credit per success."""
    return JsonResponse({"export": "ready", "user": current_user_id.get()})


def chat(request: HttpRequest, chat_id: int) -> JsonResponse:
    """Metered by its path: 2 chat credits per message."""
    return JsonResponse({"chat_id": chat_id, "reply": "Hello!"})


@metered("summaries", credits=lambda response: int(response["x-pages"]), reserve=10)
async def summarize(request: HttpRequest) -> JsonResponse:
    """An async view that charges what it used: the pages of its result (10 held meanwhile)."""
    await asyncio.sleep(0)  # awaits a model, a queue...
    pages = int(request.GET.get("pages", "1"))
    response = JsonResponse({"summary": "...", "pages": pages})
    response["x-pages"] = str(pages)
    return response


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")
