"""Background tasks: thin — load by id, call a service, safe to run twice."""
from __future__ import annotations

from django_tasks import task


@task(queue_name="default")
def deliver_webhook(delivery_id: int) -> str:
    from integrations import webhooks

    return webhooks.deliver(delivery_id)
