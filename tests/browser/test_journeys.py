"""The two journeys of the console, in a real Chromium, as two users, with a real task worker.

(A) The ML engineer uploads a version, starts a prune job, watches the bar reach 100 % without a
reload, and compares: one chart point per measured version, the Pareto frontier marked.
(B) A production release: the requester is told why they cannot approve; the release manager
approves from the release page, promotes, rolls back with a reason — and a real TF Serving-
protocol server (``python -m serving``) is asked over gRPC which version it serves each time.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from django.core.management import call_command

from tests.browser.conftest import login, no_horizontal_overflow, screenshot
from tests.processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
JOB_TIMEOUT_MS = 240_000


def test_journey_a_upload_prune_watch_progress_compare(new_page, alice, digits, digits_files, worker):
    page = new_page()
    login(page, "alice")
    page.goto("/models/digits/")
    page.get_by_role("link", name="Upload a version").click()
    page.set_input_files("#artifact", str(digits_files["model"]))
    page.get_by_label("Description").fill("retrained")
    page.get_by_label("Parent version").select_option("1")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/models/digits/#v2$"))
    assert page.locator("#v2").is_visible()

    from registry.models import ModelVersion

    v2 = ModelVersion.objects.get(model__name="digits", number=2)
    assert v2.description == "retrained" and v2.parent.number == 1 and v2.created_by.username == "alice"

    page.get_by_role("link", name="Optimize").click()
    page.get_by_label("Source version").select_option("2")
    page.get_by_label("Technique", exact=True).select_option("prune")
    page.get_by_label("Parameters (JSON object, optional)").fill('{"sparsity": 0.5, "epochs": 1}')
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.wait_for_function("document.querySelector('#job-bar') && document.querySelector('#job-bar').value >= 100",
                           timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of updating in place"
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#job-percent").inner_text() == "100 %"
    screenshot(page, "job-desktop")

    page.locator("#compare-link").click()
    page.wait_for_url(re.compile(r"/models/digits/compare/\?v=2&v=3$"))
    measured = ModelVersion.objects.filter(model__name="digits", number__in=[2, 3], metrics__isnull=False).distinct()
    assert measured.count() == 2
    points = page.locator("#size-accuracy .point")
    assert points.count() == 2
    assert sorted(points.nth(i).get_attribute("data-key") for i in range(2)) == ["v2", "v3"]
    assert page.locator("#size-accuracy .point.frontier").count() >= 1
    assert page.locator("#latency-accuracy .point").count() == 2
    assert "× smaller" in page.locator("#metrics").inner_text()  # ratios against the parent, with units
    assert " %" in page.locator("#metrics").inner_text() and "KiB" in page.locator("#metrics").inner_text()
    screenshot(page, "compare-desktop")


def served_version(client, label: str = "stable") -> int:  # type: ignore[no-untyped-def]
    x = np.zeros((1, 64), np.float32)
    _, version = client.predict("digits", {"pixels": x}, label=label)
    return version


def test_journey_b_production_release_four_eyes_promote_rollback(new_page, alice, bob, digits, digits_files,
                                                                  allowed_server, worker):
    from registry import services as registry
    from registry.uploads import StagedFile
    from releases import promotion, services
    from releases.models import Environment, Release

    server = allowed_server
    call_command("ensure_local_endpoint", repository=str(server.base_dir), environment="production",
                 name="local-production", grpc_port=server.grpc_port, rest_port=server.rest_port, images="off")
    assert Environment.objects.get(name="production").build_image is False  # no image: the SavedModel goes live

    # v1 goes live in production through the services (what the API does), so there is something to roll back to.
    v1 = registry.get_version(digits, 1)
    first = services.release_create(version=v1, environment=services.get_environment("production"), requester=alice)
    services.release_submit(release=first, actor=alice)
    services.release_approve(release=first, actor=bob, comment="first", override_reason="first release, unmeasured")
    promotion.release_promote_request(release=first, actor=bob)
    wait_for(lambda: Release.objects.get(pk=first.pk).state == "live", timeout=180, what="v1 to go live")
    assert served_version(server.client) == 1
    registry.version_create(model=digits, staged=StagedFile.from_path(digits_files["model"]), actor=alice,
                            description="candidate", parent=v1)

    # Alice requests v2 in production, and is told before any click why she cannot approve it.
    requester = new_page()
    login(requester, "alice")
    requester.goto("/models/digits/")
    requester.get_by_label("Version", exact=True).fill("2")
    requester.get_by_label("Environment", exact=True).select_option("production")
    requester.get_by_label("Notes", exact=True).fill("smaller and as accurate")
    requester.get_by_role("button", name="Request release").click()
    requester.wait_for_url(re.compile(r"/releases/\d+/$"))
    release = Release.objects.exclude(pk=first.pk).get()
    assert release.state == "pending_approval" and release.requester.username == "alice"
    assert "Four-eyes rule" in requester.locator("#four-eyes-rule").inner_text()
    assert "cannot also decide" in requester.locator("#cannot-decide").inner_text()
    assert requester.locator("#approve").count() == 0
    # Posting the decision anyway gets the API's 403 and message, and changes nothing.
    response = requester.request.post(f"/releases/{release.pk}/approve/", form={"comment": "mine"},
                                      headers={"X-CSRFToken": csrf(requester)})
    assert response.status == 403 and "Four-eyes rule" in response.text()
    release.refresh_from_db()
    assert release.state == "pending_approval" and not release.approvals.exists()

    # Bob sees it in his inbox, approves on the release page (gates failed: an override reason is needed).
    manager = new_page()
    login(manager, "bob")
    assert manager.locator("#nav-inbox").inner_text().endswith("(1)")
    manager.locator("#nav-inbox").click()
    manager.get_by_role("link", name=f"Release {release.pk}").first.click()
    assert manager.locator("#gates").is_visible()
    manager.get_by_label("Comment (required)").fill("looks good")
    manager.get_by_label(re.compile("Override reason")).fill("v2 is v1 retrained; measured offline")
    manager.locator("#approve").click()
    manager.wait_for_url(re.compile(rf"/releases/{release.pk}/$"))
    release.refresh_from_db()
    assert release.state == "approved"
    approval = release.approvals.get()
    assert approval.actor.username == "bob" and approval.override_reason.startswith("v2 is v1")
    screenshot(manager, "release-approved-desktop")

    manager.get_by_label("Endpoint").select_option("local-production")
    manager.locator("#promote").click()
    manager.locator("#release-state", has_text="Live").wait_for(timeout=180_000)  # the page follows by itself
    release.refresh_from_db()
    assert release.state == "live"
    assert served_version(server.client) == 2
    assert "promote" in manager.locator("#release-live").inner_text().lower()
    screenshot(manager, "release-live-desktop")

    manager.locator("#rollback-open").click()
    manager.get_by_label(re.compile("Reason")).fill("p95 latency regression seen in production")
    manager.locator("#rollback-confirm").click()
    manager.locator("#release-state", has_text="Rolled back").wait_for(timeout=60_000)
    release.refresh_from_db()
    assert release.state == "rolled_back"
    assert served_version(server.client) == 1
    from registry.models import AuditEvent

    rollback = AuditEvent.objects.get(action="release.rollback", object_id=str(release.pk))
    assert rollback.actor.username == "bob" and rollback.comment.startswith("p95 latency")
    trail = manager.locator("#trail").inner_text()
    assert "release.rollback" in trail and "p95 latency regression" in trail and "release.approve" in trail
    assert no_horizontal_overflow(manager)


def csrf(page) -> str:  # type: ignore[no-untyped-def]
    return next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
