"""The version admin's "measure" action starts the same job as the API (services.job_create)."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from optimization.models import OptimizationJob
from registry.models import AuditEvent

CHANGELIST = "/admin/registry/modelversion/"


@pytest.mark.django_db
def test_measure_action_queues_a_measure_job_per_version(admin_client, digits_model) -> None:
    source, datasets = digits_model
    response = admin_client.post(CHANGELIST, {"action": "measure_versions", "_selected_action": [source.pk]},
                                 follow=True)
    assert response.status_code == 200
    job = OptimizationJob.objects.get()
    assert (job.source, job.recipe, job.status, job.eval_dataset) == (source, {"technique": "measure"}, "queued",
                                                                      datasets["eval"])
    assert f"measurement job {job.pk} queued" in response.content.decode()
    assert AuditEvent.objects.filter(action="optimization_job.create", object_id=str(job.pk)).exists()


@pytest.mark.django_db
def test_measure_action_needs_the_job_permission(client, django_user_model, digits_model) -> None:
    source, _ = digits_model
    viewer = django_user_model.objects.create_user("viewer", password="pw-123456789", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client.force_login(viewer)
    response = client.post(CHANGELIST, {"action": "measure_versions", "_selected_action": [source.pk]}, follow=True)
    assert response.status_code == 200
    assert "needs permission to start optimization jobs" in response.content.decode()
    assert not OptimizationJob.objects.exists()
