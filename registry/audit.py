"""One way to write an audit event, called inside the transaction of the change it records."""
from __future__ import annotations

from typing import Any

from django.db import models, transaction

from registry.models import AuditEvent, ModelVersion, RegisteredModel


def record(
    *,
    actor: Any,
    action: str,
    obj: models.Model,
    model: RegisteredModel | None = None,
    version: ModelVersion | None = None,
    before: Any = None,
    after: Any = None,
    comment: str = "",
) -> AuditEvent:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit.record() must run inside the transaction of the change it records")
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:255],
        model=model,
        version=version,
        before=before,
        after=after,
        comment=comment,
    )
