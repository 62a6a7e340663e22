"""Background tasks for releases: thin wrappers over services, safe to run twice."""
from __future__ import annotations

from django_tasks import task


@task(queue_name="deploy")
def build_release_image(release_id: int) -> None:
    from releases import builds

    builds.release_build_run(release_id=release_id)


@task(queue_name="deploy")
def promote_release(release_id: int) -> None:
    from releases import promotion

    promotion.release_promote_run(release_id=release_id)


@task(queue_name="deploy")
def check_endpoints() -> int:
    from releases import promotion

    return promotion.check_all_endpoints()


@task(queue_name="deploy")
def rollback_release(release_id: int) -> None:
    from releases import promotion

    promotion.release_rollback_run(release_id=release_id)
