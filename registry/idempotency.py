"""``Idempotency-Key`` on creates: a retried request returns the first answer instead of
creating twice.

The same key from the same user with the same body within ``IDEMPOTENCY_TTL`` gets the stored
status and body back (header ``Idempotency-Replayed: true``); the same key with a different body
is a 409 ``idempotency_key_reused``; a request whose twin is still running is a 409
``idempotency_key_in_progress`` (retry it later). Only successful (2xx) answers are kept: after
an error the key is released, so the client's retry runs the create again.

The body fingerprint of an upload uses the sha256 that ``HashingUploadHandler`` computed while
streaming the file to disk: bytes are never read twice.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from registry.models import IdempotencyKey
from registry.errors import Conflict, RegistryError

HEADER = "Idempotency-Key"
REPLAYED = "Idempotency-Replayed"


def fingerprint(request: Request) -> str:
    """sha256 over method, path and body: form fields as given, files by their streamed digest."""
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    data = request.data
    if hasattr(data, "lists"):  # multipart or form: a QueryDict (files are in request.FILES)
        fields = sorted((k, v) for k, values in data.lists() for v in values if isinstance(v, str))
        files = sorted((k, f.name, getattr(f, "sha256", None) or _hash_file(f), f.size)
                       for k, fs in request.FILES.lists() for f in fs)
        body: Any = {"fields": fields, "files": files}
    else:
        body = data
    digest.update(json.dumps(body, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _hash_file(upload: Any) -> str:
    """Only for uploads not streamed by HashingUploadHandler (in-memory handlers in tests)."""
    sha = hashlib.sha256()
    for chunk in upload.chunks():
        sha.update(chunk)
    upload.seek(0)
    return sha.hexdigest()


def _abandoned_after() -> timedelta:
    """An in-progress row older than this belongs to a request whose process died: a create
    takes at most the inspection timeout, so twice that is safely over."""
    return timedelta(seconds=max(2 * settings.INSPECT_TIMEOUT, 600))


def _claim(user: Any, key: str, request: Request) -> IdempotencyKey | None:
    """Insert the in-progress row; None when a row for (user, key) already exists.

    Expired rows (everyone's, so the table stays small) and abandoned in-progress ones go first."""
    now = timezone.now()
    IdempotencyKey.objects.filter(created_at__lt=now - timedelta(seconds=settings.IDEMPOTENCY_TTL)).delete()
    IdempotencyKey.objects.filter(user=user, key=key, status_code__isnull=True,
                                  created_at__lt=now - _abandoned_after()).delete()
    try:
        with transaction.atomic():
            return IdempotencyKey.objects.create(user=user, key=key, method=request.method, path=request.path[:500])
    except IntegrityError:
        return None


def _replay(request: Request, key: str) -> Response:
    record = IdempotencyKey.objects.filter(user=request.user, key=key).first()
    if record is None:  # released by a failing twin in the meantime
        raise Conflict("A request with this Idempotency-Key just failed; send it again.",
                       code="idempotency_key_in_progress")
    if record.status_code is None:
        raise Conflict(f"A request with Idempotency-Key {key!r} is still in progress; retry it in a moment.",
                       code="idempotency_key_in_progress")
    if record.method != request.method or record.path != request.path[:500] or record.fingerprint != fingerprint(request):
        raise Conflict(f"Idempotency-Key {key!r} was used for a different request (another path or body) "
                       "in the last 24 hours. Use a new key for a new request.", code="idempotency_key_reused")
    return Response(record.response, status=record.status_code, headers={REPLAYED: "true"})


def idempotent(view_method: Callable[..., Response]) -> Callable[..., Response]:
    """Wrap an APIView ``post``: honour ``Idempotency-Key`` when the client sends one."""

    @functools.wraps(view_method)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER, "").strip()
        if not key:
            return view_method(self, request, *args, **kwargs)
        if len(key) > 255:
            raise RegistryError("Idempotency-Key is longer than 255 characters.", code="validation_error")
        record = _claim(request.user, key, request)
        if record is None:
            return _replay(request, key)
        try:
            response = view_method(self, request, *args, **kwargs)
        except BaseException:
            record.delete()
            raise
        if not 200 <= response.status_code < 300:
            record.delete()
            return response
        IdempotencyKey.objects.filter(pk=record.pk).update(
            fingerprint=fingerprint(request), status_code=response.status_code,
            response=json.loads(json.dumps(response.data, default=str)))
        return response

    return wrapper
