"""Issue 10, defects 1, 2 and the endpoint half of 6: an endpoint cannot make Modelyard write, read
or delete a path outside what the operator allowed, and promotion deletes only what it staged.

Personas: alice holds the release permissions and `releases.add_endpoint` (how the hole opened),
olivia is the operator (`releases.operate_endpoints`), charlie only reads. Model servers are real
`python -m serving` processes; the blob store is hashed before and after every hostile step.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from registry.models import AuditEvent
from releases import promotion
from releases.deploy import repository_engine as engine
from releases.endpoints import EndpointRefused
from releases.models import Endpoint, Environment, Promotion, Release
from tests.conftest import make_user

SECRET = "s3cr3t-token-do-not-leak"


def store_state(root: Path) -> dict[str, str]:
    """Every file under the storage root (uploads' tmp/ aside) with its sha256, and every directory."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "tmp":
            continue
        state[str(rel)] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_blobs_intact(root: Path, before: dict[str, str]) -> None:
    assert store_state(root) == before
    blobs = [p for p in (root / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in blobs)


def register(api, **fields):  # type: ignore[no-untyped-def]
    body = {"name": "ep", "environment": "production", "kind": "model_repository", "grpc_target": "127.0.0.1:1",
            **fields}
    return api.post("/api/v1/endpoints/", body, format="json")


def refused(response, field: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["message"].startswith(f"{field}: "), error
    assert not Endpoint.objects.exists()
    return error["message"]


@pytest.fixture
def root(settings) -> Path:  # type: ignore[no-untyped-def]
    return Path(settings.SERVING_ROOTS[0])


# --- who may register ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_release_rights_and_add_endpoint_do_not_register_endpoints(api, alice, root):
    assert alice.has_perm("releases.add_endpoint") and alice.has_perm("releases.change_release")
    response = register(api, repository_path=str(root / "staging"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "releases.operate_endpoints" in response.json()["error"]["message"]
    assert not Endpoint.objects.exists() and not AuditEvent.objects.filter(action="endpoint.create").exists()


@pytest.mark.django_db
def test_an_operator_registers_an_endpoint_under_a_serving_root(operator_api, olivia, root):
    response = register(operator_api, repository_path=str(root / "staging"))
    assert response.status_code == 201, response.content
    endpoint = Endpoint.objects.get(name="ep")
    assert endpoint.repository_path == str(root / "staging")
    assert endpoint.config_path == str(root / "staging" / "models.config")
    event = AuditEvent.objects.get(action="endpoint.create")
    assert event.actor == olivia and event.after["repository_path"] == str(root / "staging")


# --- where the repository and its config may lie ----------------------------------------------------

@pytest.mark.django_db
def test_repository_in_the_blob_store_is_refused(operator_api, storage_root):
    message = refused(register(operator_api, repository_path=str(storage_root / "blobs")), "repository_path")
    assert "not under an allowed serving root" in message


@pytest.mark.django_db
def test_a_root_over_the_storage_root_still_keeps_the_blob_store_out(operator_api, settings, storage_root):
    settings.SERVING_ROOTS = [str(storage_root.parent)]  # an operator's mistake; the system check says so too
    message = refused(register(operator_api, repository_path=str(storage_root / "blobs")), "repository_path")
    assert "overlaps the storage root" in message
    message = refused(register(operator_api, repository_path=str(storage_root.parent)), "repository_path")
    assert "overlaps the storage root" in message
    from releases.checks import serving_roots_configuration

    assert [e.id for e in serving_roots_configuration(None)] == ["releases.E003"]


@pytest.mark.django_db
def test_dot_dot_is_refused(operator_api, root):
    message = refused(register(operator_api, repository_path=f"{root}/staging/../../../etc"), "repository_path")
    assert "'..'" in message


@pytest.mark.django_db
def test_a_symlink_out_of_the_roots_is_refused(operator_api, root, storage_root):
    (root / "innocent").symlink_to(storage_root / "blobs")
    message = refused(register(operator_api, repository_path=str(root / "innocent")), "repository_path")
    assert f"resolves to {storage_root / 'blobs'}" in message


@pytest.mark.django_db
def test_the_filesystem_root_and_relative_paths_are_refused(operator_api, settings):
    refused(register(operator_api, repository_path="/"), "repository_path")
    assert "absolute" in refused(register(operator_api, repository_path="var/serving"), "repository_path")
    settings.SERVING_ROOTS = ["/"]
    assert "overlaps" in refused(register(operator_api, repository_path="/"), "repository_path")


@pytest.mark.django_db
def test_config_path_must_be_a_file_in_the_repository(operator_api, root):
    repo = root / "staging"
    repo.mkdir()
    (repo / "linked.config").symlink_to("/etc/passwd")
    cases = {"/etc/passwd": "directly inside repository_path", "models.config": "absolute",
             str(repo / "linked.config"): "directly inside repository_path",
             str(repo / "sub" / "models.config"): "directly inside repository_path",
             str(repo / "digits"): "collide with a model directory",
             str(repo / ".modelyard.lock"): "collide"}
    for config_path, why in cases.items():
        assert why in refused(register(operator_api, repository_path=str(repo), config_path=config_path),
                              "config_path"), config_path
    assert Path("/etc/passwd").read_text()  # untouched, and readable as before


@pytest.mark.django_db
def test_repositories_of_two_endpoints_do_not_nest(operator_api, root):
    assert register(operator_api, repository_path=str(root / "a")).status_code == 201
    response = register(operator_api, name="inner", repository_path=str(root / "a" / "b"))
    assert response.status_code == 400 and "nests with another endpoint" in response.json()["error"]["message"]
    shared = register(operator_api, name="shared", repository_path=str(root / "a"))  # one volume, two servers
    assert shared.status_code == 201


# --- docker hosts and profiles ----------------------------------------------------------------------

@pytest.mark.django_db
def test_docker_host_must_be_one_the_operator_allowed(operator_api, settings):
    settings.DOCKER_HOSTS = ["unix:///var/run/docker.sock", "ssh://gpu-1"]
    docker = {"kind": "docker", "grpc_port_base": 9600, "grpc_target": ""}
    response = register(operator_api, docker_host="tcp://attacker.example:2375", **docker)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("docker_host: 'tcp://attacker.example:2375' is not an "
                                                          "allowed Docker host")
    assert register(operator_api, docker_host="ssh://gpu-1/", **docker).status_code == 201
    assert register(operator_api, name="default-host", **docker).status_code == 201


@pytest.mark.django_db
def test_docker_host_is_checked_again_when_used():
    endpoint = Endpoint.objects.create(name="old", environment=Environment.objects.get(name="production"),
                                       kind="docker", grpc_port_base=9600, docker_host="tcp://10.0.0.9:2375")
    with pytest.raises(EndpointRefused, match="docker_host"):
        promotion.driver(endpoint)


@pytest.mark.django_db
@pytest.mark.parametrize("profile, key, why", [
    ({"privileged": True}, "profile.privileged", "unknown key"),
    ({"xla": "yes"}, "profile.xla", "true or false"),
    ({"gpu": 1}, "profile.gpu", "true or false"),
    ({"gpu_memory_fraction": 1.5}, "profile.gpu_memory_fraction", "(0, 1]"),
    ({"gpu_memory_fraction": 0}, "profile.gpu_memory_fraction", "(0, 1]"),
    ({"batching": {"max_batch_size": -1}}, "profile.batching", "positive integer"),
    ({"batching": {"max_batch_size": 8, "evil": 1}}, "profile.batching", "unknown keys"),
    ({"batching": "big"}, "profile.batching", "object"),
    ({"mounts": [{"source": "/", "target": "/host", "read_only": False}]}, "profile.mounts[0].read_only",
     "read-only"),
    ({"mounts": [{"source": "relative", "target": "/x"}]}, "profile.mounts[0].source", "absolute"),
    ({"environment": {"A": 1}}, "profile.environment.A", "string"),
    ([1, 2], "profile", "JSON object"),
])
def test_profile_is_checked_against_its_schema(operator_api, profile, key, why):
    message = refused(register(operator_api, kind="docker", grpc_port_base=9600, profile=profile), key)
    assert why in message


@pytest.mark.django_db
def test_a_mount_of_the_storage_root_is_refused(operator_api, storage_root):
    profile = {"mounts": [{"source": str(storage_root), "target": "/blobs"}]}
    message = refused(register(operator_api, kind="docker", grpc_port_base=9600, profile=profile),
                      "profile.mounts[0].source")
    assert "storage root" in message


@pytest.mark.django_db
def test_a_valid_profile_is_stored(operator_api):
    profile = {"gpu": False, "xla": True, "gpu_memory_fraction": 0.5, "batching": {"max_batch_size": 8},
               "mounts": [{"source": "/usr/lib", "target": "/usr/lib"}], "environment": {"TF_CPP_MIN_LOG_LEVEL": "2"}}
    response = register(operator_api, kind="docker", grpc_port_base=9600, profile=profile)
    assert response.status_code == 201, response.content
    assert Endpoint.objects.get().profile["mounts"] == [{"source": "/usr/lib", "target": "/usr/lib",
                                                         "read_only": True}]


# --- admin and the management command go through the same service -------------------------------------

@pytest.mark.django_db
def test_admin_needs_the_operator_permission_and_applies_the_policy(client, django_user_model, olivia, root,
                                                                     storage_root):
    staff = make_user(django_user_model, "sam", ["releases.add_endpoint", "releases.change_endpoint",
                                             "releases.view_endpoint"], is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/releases/endpoint/add/").status_code == 403
    olivia.is_staff = True
    olivia.save()
    client.force_login(olivia)
    production = Environment.objects.get(name="production").pk
    form = {"name": "gpu-1", "environment": production, "kind": "model_repository", "grpc_target": "h:8500",
            "repository_path": str(storage_root / "blobs"), "profile": "{}", "promotions-TOTAL_FORMS": 0,
            "promotions-INITIAL_FORMS": 0}
    page = client.post("/admin/releases/endpoint/add/", form)
    assert page.status_code == 200 and "not under an allowed serving root" in page.content.decode()
    assert not Endpoint.objects.exists()
    response = client.post("/admin/releases/endpoint/add/", {**form, "repository_path": str(root / "gpu-1")})
    assert response.status_code == 302, response.content.decode()[-3000:]
    endpoint = Endpoint.objects.get(name="gpu-1")
    assert endpoint.config_path == str(root / "gpu-1" / "models.config")
    assert AuditEvent.objects.get(action="endpoint.create").actor == olivia
    change = client.post(f"/admin/releases/endpoint/{endpoint.pk}/change/",
                         {**form, "repository_path": "/etc", "config_path": ""})
    assert change.status_code == 200 and "not under an allowed serving root" in change.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.repository_path == str(root / "gpu-1")


@pytest.mark.django_db
def test_ensure_local_endpoint_uses_the_same_policy(root, storage_root):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="not under an allowed serving root"):
        call_command("ensure_local_endpoint", "--repository", str(storage_root / "blobs"))
    assert not Endpoint.objects.exists()
    call_command("ensure_local_endpoint", "--repository", str(root / "staging"))
    call_command("ensure_local_endpoint", "--repository", str(root / "staging"))  # idempotent
    endpoint = Endpoint.objects.get(name="local")
    assert endpoint.repository_path == str(root / "staging") and (root / "staging").is_dir()
    events = AuditEvent.objects.filter(object_type="releases.endpoint").order_by("id")
    assert list(events.values_list("action", flat=True)) == [
        "endpoint.create", "endpoint.update"]


# --- promotion and health against real model servers -------------------------------------------------

@pytest.fixture
def server(launch_server, settings):  # type: ignore[no-untyped-def]
    live = launch_server(0)
    settings.SERVING_ROOTS = [str(live.root)]
    return live


def promote(release: Release, actor, capture) -> Release:  # type: ignore[no-untyped-def]
    with capture(execute=True):
        promotion.release_promote_request(release=release, actor=actor)
    release.refresh_from_db()
    return release


def image_ready(version, endpoint: Endpoint, requester) -> Release:  # type: ignore[no-untyped-def]
    # The image build is covered by test_builds (real engine); promotion starts from image_ready.
    return Release.objects.create(version=version, environment=endpoint.environment, requester=requester,
                                  state="image_ready")


@pytest.mark.django_db
def test_an_old_row_pointing_at_the_blob_store_is_refused_when_used(
        alice, versions, artifacts, server, storage_root, immediate, django_capture_on_commit_callbacks):
    """Defect 1 as reported: the endpoint's repository is the blob store and the model is named
    like a blob prefix. A row saved before these rules (or behind the API's back) is checked again
    at promotion: nothing is staged, written or deleted."""
    from registry import services
    from registry.uploads import StagedFile

    v1, _ = versions
    prefix = v1.artifact_sha256[:2]
    model = services.model_create(name=prefix, owner=alice, task="classification")
    version = services.version_create(model=model, staged=StagedFile.from_path(artifacts["zip"]), actor=alice)
    assert version.artifact_sha256 == v1.artifact_sha256  # one blob, under the prefix the model is named like
    endpoint = Endpoint.objects.create(name="hostile", environment=Environment.objects.get(name="production"),
                                       kind="model_repository", grpc_target=f"127.0.0.1:{server.grpc_port}",
                                       repository_path=str(storage_root / "blobs"),
                                       config_path=str(storage_root / "blobs" / "models.config"))
    before = store_state(storage_root)
    release = promote(image_ready(version, endpoint, alice), alice, django_capture_on_commit_callbacks)
    assert release.state == "failed" and release.failure_step == "promote:hostile:prepare"
    assert release.failure_reason.startswith("repository_path: ") and "serving root" in release.failure_reason
    assert release.retryable is False
    assert_blobs_intact(storage_root, before)
    response_health = promotion.check_endpoint_health(endpoint)
    assert response_health.health_error.startswith("not allowed by the operator's policy: repository_path")
    assert_blobs_intact(storage_root, before)


def foreign_entries(model_dir: Path, outside: Path) -> dict[str, str]:
    """What someone else keeps in the model's directory; returns a fingerprint of each entry."""
    model_dir.mkdir(parents=True)
    (model_dir / "7").mkdir()
    (model_dir / "7" / "keep.txt").write_text("not Modelyard's")
    outside.mkdir()
    (outside / "precious.txt").write_text("outside the repository")
    (model_dir / "8").symlink_to(outside, target_is_directory=True)
    (model_dir / "9").mkdir()  # a forged manifest: right names, wrong content
    (model_dir / "9" / "saved_model.pb").write_text("someone else's")
    (model_dir / "9" / engine.MANIFEST_NAME).write_text(json.dumps(
        {"written_by": "modelyard", "model": model_dir.name, "version": 9, "tree_sha256": "0" * 64}))
    (model_dir / "README").write_text("notes")
    return fingerprint(model_dir, outside)


def fingerprint(model_dir: Path, outside: Path) -> dict[str, str]:
    paths = [model_dir / n for n in ("7", "7/keep.txt", "9", "9/saved_model.pb", "README")]
    state = {str(p.relative_to(model_dir)): (p.read_text() if p.is_file() else "<dir>") for p in paths}
    state["8"] = os.readlink(model_dir / "8")
    state["outside"] = (outside / "precious.txt").read_text()
    return state


@pytest.mark.django_db
def test_promotion_leaves_what_it_did_not_write_and_reports_it(
        alice, olivia, versions, server, storage_root, tmp_path, immediate, django_capture_on_commit_callbacks):
    v1, v2 = versions
    endpoint = promotion.endpoint_create(actor=olivia, name="gpu-1", environment="production",
                                         kind="model_repository", grpc_target=f"127.0.0.1:{server.grpc_port}",
                                         repository_path=str(server.base_dir))
    model_dir = server.base_dir / "digits"
    before = foreign_entries(model_dir, tmp_path / "outside")
    blobs_before = store_state(storage_root)

    first = promote(image_ready(v1, endpoint, alice), alice, django_capture_on_commit_callbacks)
    assert first.state == "live", (first.failure_step, first.failure_reason)
    second = promote(image_ready(v2, endpoint, alice), alice, django_capture_on_commit_callbacks)
    assert second.state == "live", (second.failure_step, second.failure_reason)

    assert fingerprint(model_dir, tmp_path / "outside") == before
    assert_blobs_intact(storage_root, blobs_before)
    for number in (1, 2):  # what Modelyard staged carries its manifest
        manifest = json.loads((model_dir / str(number) / engine.MANIFEST_NAME).read_text())
        assert manifest["model"] == "digits" and manifest["version"] == number
        assert manifest["tree_sha256"] == engine.tree_sha256(model_dir / str(number))
    clean = [s["message"] for s in Promotion.objects.get(release=second).steps if s["step"] == "clean"]
    assert clean == ["left 4 entries Modelyard did not write untouched: ['7', '8', '9', 'README']"]
    health = promotion.check_endpoint_health(endpoint)
    assert health.health_error == ""
    # Health reads manifests without re-hashing every version (it runs every 30 s): the forged
    # "9" passes there; the clean-up, which deletes, re-hashes and refused it above.
    assert health.health["digits"]["unmanaged"] == ["7", "8", "README"]
    assert health.health["digits"]["labels"] == {"canary": 2, "stable": 2}


@pytest.mark.django_db
def test_staging_never_goes_through_a_symlinked_model_directory(
        alice, olivia, versions, server, tmp_path, immediate, django_capture_on_commit_callbacks):
    v1, _ = versions
    endpoint = promotion.endpoint_create(actor=olivia, name="gpu-1", environment="production",
                                         kind="model_repository", grpc_target=f"127.0.0.1:{server.grpc_port}",
                                         repository_path=str(server.base_dir))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (server.base_dir / "digits").symlink_to(elsewhere, target_is_directory=True)
    config_before = server.config_path.read_text()
    release = promote(image_ready(v1, endpoint, alice), alice, django_capture_on_commit_callbacks)
    assert release.state == "failed" and "is not a directory (a symlink or a file)" in release.failure_reason
    assert list(elsewhere.iterdir()) == [] and server.config_path.read_text() == config_before


@pytest.mark.django_db
@pytest.mark.parametrize("content", ["", f"root:x:0:0:{SECRET}:/root:/bin/bash\n", "# just a comment\n"])
def test_a_config_file_that_is_not_a_models_config_is_never_overwritten(
        alice, olivia, versions, server, immediate, django_capture_on_commit_callbacks, content):
    v1, _ = versions
    other = server.base_dir / "other.config"
    other.write_text(content)
    endpoint = promotion.endpoint_create(actor=olivia, name="gpu-1", environment="production",
                                         kind="model_repository", grpc_target=f"127.0.0.1:{server.grpc_port}",
                                         repository_path=str(server.base_dir), config_path=str(other))
    release = promote(image_ready(v1, endpoint, alice), alice, django_capture_on_commit_callbacks)
    assert release.state == "failed" and release.failure_step == "promote:gpu-1:check"
    assert other.read_text() == content and not (server.base_dir / "digits").exists()
    assert SECRET not in release.failure_reason
    assert SECRET not in json.dumps(list(AuditEvent.objects.values_list("comment", "after")), default=str)


@pytest.mark.django_db
@pytest.mark.parametrize("content, expected", [
    (f"{SECRET} {{\n".encode(), "config invalid"),
    (f"model_config_list {{ config {{ name: '{SECRET}' base_path: 1 }} }}".encode(), "config invalid"),
    (b"\xff\xfe" + SECRET.encode(), "config unreadable"),
])
def test_health_never_shows_the_config_files_content(
        olivia, readonly_api, server, content, expected):
    secret = server.base_dir / "secret.config"
    secret.write_bytes(content)
    promotion.endpoint_create(actor=olivia, name="gpu-1", environment="production", kind="model_repository",
                              grpc_target=f"127.0.0.1:{server.grpc_port}", repository_path=str(server.base_dir),
                              config_path=str(secret))
    response = readonly_api.get("/api/v1/endpoints/gpu-1/?refresh=1")
    assert response.status_code == 200
    assert response.json()["health_error"] == expected and response.json()["reachable"] is True
    assert SECRET not in response.content.decode()
    assert secret.read_bytes() == content


@pytest.mark.django_db
def test_health_of_a_fifo_config_does_not_hang(olivia, readonly_api, server):
    fifo = server.base_dir / "fifo.config"
    os.mkfifo(fifo)
    promotion.endpoint_create(actor=olivia, name="gpu-1", environment="production", kind="model_repository",
                              grpc_target=f"127.0.0.1:{server.grpc_port}", repository_path=str(server.base_dir),
                              config_path=str(fifo))
    assert readonly_api.get("/api/v1/endpoints/gpu-1/?refresh=1").json()["health_error"] == "config unreadable"


# --- the engine on its own: names and paths ---------------------------------------------------------

def test_model_names_cannot_leave_the_repository(tmp_path, tiny_models):
    base = tmp_path / "repo"
    base.mkdir()
    for name in ("..", "../x", ".hidden", "a/b", "", "x\0y"):
        with pytest.raises(ValueError):
            engine.model_dir_in(base, name)
    (base / "linked").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(engine.StagingError, match="symlink"):
        engine.stage_version(base, "linked", 1, tiny_models["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["repo"] and [p.name for p in base.iterdir()] == ["linked"]


def test_an_existing_version_symlink_is_never_staged_over(tmp_path, tiny_models):
    base = tmp_path / "repo"
    (base / "m").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "m" / "1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(engine.StagingError, match="left untouched"):
        engine.stage_version(base, "m", 1, tiny_models["a"])
    assert list(outside.iterdir()) == [] and (base / "m" / "1").is_symlink()
