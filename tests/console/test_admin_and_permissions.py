"""The admin's rough edges, the console's permission answers (the API's rule and message), and the
local endpoints `make run` registers."""
from __future__ import annotations

import hashlib
import html

import pytest
from django.core.management import call_command

from tests.console.conftest import make_rows
from tests.conftest import missing

API_DENIED = "You do not have permission to perform this action."


@pytest.mark.django_db
def test_admin_names_version_metrics_and_shows_no_save_on_read_only_records(admin_client, alice):
    from optimization.models import OptimizationJob
    from releases.models import Endpoint, Release

    make_rows(alice, 2)
    listing = admin_client.get("/admin/").content.decode()
    assert "Version metrics" in listing and "metricss" not in listing
    release = Release.objects.first()
    page = admin_client.get(f"/admin/releases/release/{release.pk}/change/").content.decode()
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    job = OptimizationJob.objects.first()
    page = admin_client.get(f"/admin/optimization/optimizationjob/{job.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    endpoint = Endpoint.objects.first()
    page = admin_client.get(f"/admin/releases/endpoint/{endpoint.pk}/change/").content.decode()
    assert 'name="health"' not in page and "stable→v1" in page  # shown, not editable


@pytest.mark.django_db
def test_admin_403_is_a_styled_page(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="pw-123456789", is_staff=True)
    client.force_login(staff)
    response = client.get("/admin/releases/release/")
    assert response.status_code == 403
    body = response.content.decode()
    assert "You do not have permission" in body and "console.css" in body


@pytest.mark.django_db
def test_console_writes_need_the_api_permission_and_answer_its_message(client, alice, charlie):
    make_rows(alice, 1, name="digits")
    client.force_login(charlie)
    response = client.post("/models/digits/alias/", {"alias": "champion", "version": "1"})
    assert response.status_code == 403 and API_DENIED in response.content.decode()
    response = client.post("/models/digits/release/", {"version": "1", "environment": "staging"})
    assert response.status_code == 403 and API_DENIED in response.content.decode()
    from releases.models import Release

    assert Release.objects.count() == 1  # only make_rows' own


@pytest.mark.django_db
def test_moving_an_alias_from_the_console_calls_the_service(client, alice):
    from registry.models import AuditEvent, ModelAlias, ModelVersion

    model = make_rows(alice, 2, name="digits")
    client.force_login(alice)
    response = client.post("/models/digits/alias/", {"alias": "champion", "version": "2"})
    assert response.status_code == 302
    alias = ModelAlias.objects.get(model=model, name="champion")
    assert alias.version == ModelVersion.objects.get(model=model, number=2)
    assert AuditEvent.objects.filter(action="alias.set", actor=alice).count() == 1
    response = client.post("/models/digits/alias/", {"alias": "champion", "version": "9"})
    assert response.status_code == 404 and "has no version 9" in response.content.decode()


@pytest.mark.django_db
def test_a_bad_recipe_gets_the_api_message_and_queues_nothing(client, alice):
    from optimization.models import OptimizationJob

    make_rows(alice, 1, name="digits")
    client.force_login(alice)
    before = OptimizationJob.objects.count()
    response = client.post("/models/digits/optimize/", {"version": "1", "kind": "technique",
                                                        "technique": "prune", "params": "{not json"})
    assert response.status_code == 400 and "Not valid JSON" in response.content.decode()
    response = client.post("/models/digits/optimize/", {"version": "1", "kind": "technique", "technique": "nope"})
    assert response.status_code == 400 and "nope" in response.content.decode()
    assert OptimizationJob.objects.count() == before


@pytest.mark.django_db
def test_local_production_endpoint_promotes_savedmodels_without_an_engine(settings, tmp_path):
    from releases.models import Endpoint, Environment

    settings.DOCKER_HOST = f"unix://{tmp_path}/no-engine.sock"
    settings.SERVING_ROOTS = [str(tmp_path)]
    call_command("ensure_local_endpoint", repository=str(tmp_path / "production"), environment="production",
                 name="local-production", grpc_port=8510, rest_port=8511, images="auto")
    endpoint = Endpoint.objects.get(name="local-production")
    assert endpoint.environment.name == "production" and endpoint.grpc_target == "127.0.0.1:8510"
    production = Environment.objects.get(name="production")
    assert production.build_image is False and production.four_eyes is True


@pytest.mark.docker
@pytest.mark.django_db
def test_local_production_endpoint_builds_images_where_an_engine_answers(settings, tmp_path):
    from releases.management.commands.ensure_local_endpoint import engine_reachable
    from releases.models import Environment

    if not engine_reachable():
        missing("no Docker engine (bin/test-services starts one)")
    settings.SERVING_ROOTS = [str(tmp_path)]
    call_command("ensure_local_endpoint", repository=str(tmp_path / "production"), environment="production",
                 name="local-production", grpc_port=8510, rest_port=8511, images="auto")
    assert Environment.objects.get(name="production").build_image is True


@pytest.mark.django_db
def test_registering_a_model_from_the_console(client, alice, charlie):
    from registry.models import AuditEvent, RegisteredModel

    client.force_login(charlie)
    response = client.post("/new-model/", {"name": "ranker", "task": "classification"})
    assert response.status_code == 403 and not RegisteredModel.objects.filter(name="ranker").exists()
    client.force_login(alice)
    response = client.post("/new-model/", {"name": "ranker", "task": "classification", "tags": "nlp, ranking"})
    assert response.status_code == 302 and response["Location"] == "/models/ranker/"
    model = RegisteredModel.objects.get(name="ranker")
    assert sorted(t.name for t in model.tags.all()) == ["nlp", "ranking"] and model.owner == alice
    assert AuditEvent.objects.filter(action="model.create", actor=alice).count() == 1
    response = client.post("/new-model/", {"name": "ranker"})
    assert response.status_code == 409 and "already exists" in response.content.decode()
    response = client.post("/new-model/", {"name": "Bad Name"})
    assert response.status_code == 400


@pytest.mark.django_db
def test_unknown_model_or_release_is_a_404_page_not_an_error(client, alice):
    client.force_login(alice)
    for url in ("/models/nope/", "/models/nope/compare/", "/releases/999/", "/jobs/999/"):
        response = client.get(url)
        assert response.status_code == 404, url
    response = client.post("/models/nope/alias/", {"alias": "a", "version": "1"})
    assert response.status_code == 404 and "No registered model is named 'nope'" in html.unescape(response.content.decode())
    response = client.post("/models/nope/release/", {"version": "1", "environment": "production"})
    assert response.status_code == 404


@pytest.mark.django_db
def test_the_model_page_links_each_version_to_its_verified_download(client, alice, registered, artifacts):
    from registry import services
    from registry.uploads import StagedFile

    services.version_create(model=registered, staged=StagedFile.from_path(artifacts["tflite"]), actor=alice)
    client.force_login(alice)
    page = client.get(f"/models/{registered.name}/").content.decode()
    url = f"/api/v1/models/{registered.name}/versions/1/artifact"
    assert f'href="{url}"' in page
    download = client.get(url)
    body = b"".join(download.streaming_content) if download.streaming else download.content
    assert download.status_code == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(artifacts["tflite"].read_bytes()).hexdigest()
