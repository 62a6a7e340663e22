"""Settings in Chromium: create an API token, see its secret once (and copy it), revoke it; the
tokens and webhooks pages (with a delivery log) at 390 px and 1280 px without page overflow and
with no serious or critical axe violation. MODELYARD_SCREENSHOTS saves each page."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from tests.browser.conftest import PHONE, login, no_horizontal_overflow, screenshot
from tests.browser.test_every_page import serious_violations
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)
DESKTOP = {"width": 1280, "height": 900}
WEBHOOK_PERMS = ["integrations.add_webhooksubscription", "integrations.change_webhooksubscription",
                 "integrations.delete_webhooksubscription"]


def test_create_a_token_see_its_secret_once_copy_it_and_revoke_it(new_page, alice, live_server):
    from integrations.models import ApiToken

    page = new_page(DESKTOP)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    login(page, "alice")
    page.get_by_role("link", name="Settings").click()
    page.wait_for_url(re.compile(r"/settings/tokens/$"))
    page.get_by_label("Name").fill("github-actions")
    page.get_by_label("registry:read").check()
    page.get_by_label("registry:write").check()
    page.get_by_label("Expires after").select_option("30")
    page.get_by_role("button", name="Create token").click()

    secret = page.locator("#token-secret").inner_text()
    assert re.fullmatch(r"myd_[A-Za-z0-9_-]{43}", secret)
    assert page.content().count(secret) == 1
    assert "You will not see this token again" in page.locator("#once").inner_text()
    page.get_by_role("button", name="Copy").click()
    page.wait_for_function("document.getElementById('token-secret-copied').textContent.includes('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    token = ApiToken.objects.get(name="github-actions")
    assert token.user == alice and token.scopes == ["registry:read", "registry:write"]
    api = f"{live_server.url}/api/v1/models/"
    assert requests.get(api, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code == 200

    page.get_by_role("link", name=re.compile("I have copied it")).click()
    page.wait_for_url(re.compile(rf"/settings/tokens/#token-{token.pk}$"))
    assert secret not in page.content()
    row = page.locator(f"#token-{token.pk}")
    assert row.locator(".badge").inner_text() == "active"
    row.get_by_text("Revoke…").click()
    row.get_by_role("button", name="Revoke github-actions").click()
    page.wait_for_url(re.compile(rf"/settings/tokens/#token-{token.pk}$"))
    assert page.locator(f"#token-{token.pk} .badge").first.inner_text() == "revoked"
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert requests.get(api, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code == 401


@pytest.fixture
def settings_data(alice, settings):  # type: ignore[no-untyped-def]
    """Alice's tokens (active, expired, revoked) and a webhook with a delivery log; rows written
    straight to the database (the tests above and in tests/console create them through the pages)."""
    from django.contrib.auth.models import Permission

    from integrations import tokens
    from integrations.models import ApiToken, WebhookDelivery, WebhookSubscription
    from registry.models import RegisteredModel

    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]  # the form below subscribes localhost
    alice.user_permissions.add(*Permission.objects.filter(content_type__app_label="integrations",
                                                          codename__endswith="webhooksubscription"))
    used, _ = tokens.token_create(actor=alice, name="gitlab-ci ranker", scopes=["registry:read", "registry:write",
                                                                                 "optimize", "releases:request"])
    ApiToken.objects.filter(pk=used.pk).update(last_used_at=timezone.now() - timedelta(minutes=3))
    old, _ = tokens.token_create(actor=alice, name="nightly-eval", scopes=["registry:read"], expires_in_days=7)
    ApiToken.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(days=2))
    gone, _ = tokens.token_create(actor=alice, name="old-laptop", scopes=["registry:read", "releases:read"])
    tokens.token_revoke(token=gone, actor=alice)

    model = RegisteredModel.objects.create(name="ranker", owner=alice, task="classification")
    hook = WebhookSubscription.objects.create(
        owner=alice, url="https://deploy.example.com/hooks/modelyard", secret="whsec_x", description="deploy bot",
        events=["release.approved", "release.live", "release.rolled_back"], model=model)
    WebhookSubscription.objects.create(owner=alice, url="https://chat.example.com/services/T000/B000/XXXX",
                                       secret="whsec_y", events=["release.pending_approval"], active=False)
    now = timezone.now()
    log = [("release.approved", "succeeded", 1, 200, ""),
           ("release.live", "failed", 8, 500, "HTTP 500: upstream deploy service unavailable"),
           ("release.rolled_back", "retrying", 2, None, "ConnectionError: HTTPSConnectionPool(host='deploy.example.com',"
                                                         " port=443): Read timed out. (read timeout=10)"),
           ("release.approved", "succeeded", 1, 204, "")]
    for i, (event, status, attempts, code, error) in enumerate(log):
        WebhookDelivery.objects.create(
            subscription=hook, event=event, subject=f"releases.release:{40 + i}", status=status, attempts=attempts,
            response_code=code, last_error=error, created_at=now - timedelta(minutes=10 * (4 - i)),
            delivered_at=now - timedelta(minutes=10 * (4 - i)) if status == "succeeded" else None,
            next_attempt_at=now + timedelta(seconds=60) if status == "retrying" else None,
            payload={"event": event, "object": {"type": "releases.release", "id": 40 + i, "model": "ranker"}})
    return {"webhook": hook.pk}


def check(page, name: str, suffix: str, problems: dict[str, list[str]], *,  # type: ignore[no-untyped-def]
          shot: bool = True) -> None:
    if suffix == "phone" and not no_horizontal_overflow(page):
        width = page.evaluate("document.documentElement.scrollWidth")
        problems.setdefault(name, []).append(f"horizontal overflow: {width}px > 390px")
    if found := serious_violations(page):
        problems.setdefault(name, []).extend(found)
    if shot:  # docs/screenshots keeps the four pages the README shows
        screenshot(page, f"{name}-{suffix}")


@pytest.mark.parametrize("viewport,suffix", [(PHONE, "phone"), (DESKTOP, "desktop")])
def test_settings_pages_fit_a_phone_and_pass_axe(new_page, settings_data, viewport, suffix):
    page = new_page(viewport)
    login(page, "alice")
    problems: dict[str, list[str]] = {}
    page.goto("/settings/tokens/")
    check(page, "tokens", suffix, problems)
    page.locator("details.confirm-inline summary").first.click()  # the revoke confirmation, opened
    check(page, "tokens-revoke", suffix, problems, shot=False)
    page.get_by_label("Name").fill("github-actions")
    page.get_by_label("releases:request").check()
    page.get_by_role("button", name="Create token").click()
    page.wait_for_selector("#token-secret")
    check(page, "token-created", suffix, problems)

    page.goto("/settings/webhooks/")
    check(page, "webhooks", suffix, problems)
    page.get_by_label("URL").fill("http://localhost:8080/hooks/modelyard")
    page.get_by_label("release.pending_approval").check()
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_selector("#webhook-secret")
    check(page, "webhook-created", suffix, problems, shot=False)

    page.goto(f"/settings/webhooks/{settings_data['webhook']}/")
    page.locator("#delivery-log details.payload summary").first.click()
    check(page, "webhook-deliveries", suffix, problems)
    page.locator("#edit-open").click()
    check(page, "webhook-edit", suffix, problems, shot=False)
    assert not problems, problems
