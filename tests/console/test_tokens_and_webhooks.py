"""Settings pages: API tokens and webhooks from the console. The same services, permissions and
messages as /api/v1/tokens/ and /api/v1/webhooks/; secrets shown exactly once; other users' rows
are 404s; hostile text is escaped; query counts do not grow with the lists."""
from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from integrations import tokens, webhooks
from integrations.models import ApiToken, ServiceAccount, WebhookDelivery, WebhookSubscription
from registry.models import AuditEvent
from tests.conftest import make_user

API_DENIED = "You do not have permission to perform this action."
TOKEN_RE = re.compile(r"myd_[A-Za-z0-9_-]{43}")
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9_-]{43}")
HOOK = "http://127.0.0.1:9/hook"
WEBHOOK_PERMS = ["integrations.add_webhooksubscription", "integrations.change_webhooksubscription",
                 "integrations.delete_webhooksubscription"]

pytestmark = pytest.mark.django_db


@pytest.fixture
def loopback(settings):  # type: ignore[no-untyped-def]
    """The operator allow-list lets webhooks target loopback (nothing is sent in these tests)."""
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture
def hana(django_user_model):  # type: ignore[no-untyped-def]
    """Manages her own webhooks (the three webhook permissions, nothing else)."""
    return make_user(django_user_model, "hana", WEBHOOK_PERMS)


@pytest.fixture
def ci_bot(django_user_model, bob):  # type: ignore[no-untyped-def]
    user = make_user(django_user_model, "ci-bot", ["registry.add_modelversion"])
    ServiceAccount.objects.create(user=user, created_by=bob)
    return user


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def body(response) -> str:  # type: ignore[no-untyped-def]
    return response.content.decode()


# --- API tokens -------------------------------------------------------------------------------

def test_settings_is_in_the_navigation(client, alice):
    client.force_login(alice)
    assert 'href="/settings/tokens/"' in body(client.get("/"))
    assert client.get("/settings/")["Location"] == "/settings/tokens/"
    assert client.get("/settings/tokens/new/")["Location"] == "/settings/tokens/#create"
    assert client.get("/settings/webhooks/new/")["Location"] == "/settings/webhooks/#create"
    assert client.post("/settings/tokens/", {"name": "x", "scopes": ["registry:read"]}).status_code == 405
    assert not ApiToken.objects.exists()


def test_a_token_created_in_the_console_is_shown_exactly_once_and_works(client, alice):
    client.force_login(alice)
    form = client.get("/settings/tokens/")
    assert form.status_code == 200
    assert 'value="releases:approve"' in body(form) and "four-eyes" in body(form)
    created = client.post("/settings/tokens/new/", {"name": "github-actions", "scopes": ["registry:read", "optimize"],
                                                "expires_in_days": "30"})
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    secrets = TOKEN_RE.findall(body(created))
    assert len(secrets) == 1, "the secret appears once, in the copy box"
    assert "You will not see this token again" in body(created)
    token = ApiToken.objects.get(name="github-actions")
    assert token.user == alice and token.created_by == alice and token.scopes == ["optimize", "registry:read"]
    assert token.token_hash == hashlib.sha256(secrets[0].encode()).hexdigest()
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert AuditEvent.objects.filter(action="token.create", object_id=str(token.pk), actor=alice).count() == 1

    listing = body(client.get("/settings/tokens/"))
    assert secrets[0] not in listing and not TOKEN_RE.search(listing)
    assert f"{token.prefix}…" in listing and f'id="token-{token.pk}"' in listing
    assert bearer(secrets[0]).get("/api/v1/models/").status_code == 200


def test_token_form_refusals_are_the_services_messages(client, alice, settings):
    client.force_login(alice)
    good = {"name": "ci", "scopes": ["registry:read"], "expires_in_days": "90"}
    assert client.post("/settings/tokens/new/", good).status_code == 201
    cases = [
        ({**good, "name": "other", "scopes": []}, 400, "scopes: This list may not be empty."),
        ({**good, "name": "other", "scopes": ["registry:admin"]}, 400, "&quot;registry:admin&quot; is not a valid choice"),
        ({**good, "name": "other", "expires_in_days": "9999"}, 400,
         f"expires_in_days must be between 1 and {settings.API_TOKEN_MAX_DAYS}"),
        ({**good, "name": "other", "expires_in_days": "soon"}, 400, "expires_in_days: A valid integer is required."),
        ({**good, "name": ""}, 400, "name: This field is required."),
        ({**good, "name": "x" * 101}, 400, "name: Ensure this field has no more than 100 characters."),
        (good, 409, "already has an active token named &#x27;ci&#x27;"),
    ]
    for data, status, message in cases:
        response = client.post("/settings/tokens/new/", data)
        assert response.status_code == status, (data, body(response)[:300])
        assert message in body(response), (data, message)
        assert not TOKEN_RE.search(body(response))
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["ci"]
    refused = client.post("/settings/tokens/new/", {**good, "name": "kept-name", "scopes": []})
    assert 'value="kept-name"' in body(refused) and 'value="registry:read" checked' not in body(refused)


def test_revoking_asks_first_then_revokes_at_once(client, alice):
    token, secret = tokens.token_create(actor=alice, name="ci", scopes=["registry:read"])
    client.force_login(alice)
    listing = body(client.get("/settings/tokens/"))
    assert "Revoke…" in listing and f'action="/settings/tokens/{token.pk}/revoke/"' in listing
    assert "this cannot be undone" in listing
    assert client.get(f"/settings/tokens/{token.pk}/revoke/").status_code == 405  # a POST, never a link
    response = client.post(f"/settings/tokens/{token.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == f"/settings/tokens/#token-{token.pk}"
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoke", object_id=str(token.pk), actor=alice).count() == 1
    assert bearer(secret).get("/api/v1/models/").status_code == 401
    listing = body(client.get("/settings/tokens/"))
    assert "badge bad\">revoked" in listing and f"/settings/tokens/{token.pk}/revoke/" not in listing
    assert client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 302  # twice: no change
    assert AuditEvent.objects.filter(action="token.revoke").count() == 1


def test_another_users_token_is_a_404_and_stays_usable(client, alice, bob):
    theirs, secret = tokens.token_create(actor=bob, name="bobs-secret-pipeline", scopes=["releases:read"])
    client.force_login(alice)
    assert "bobs-secret-pipeline" not in body(client.get("/settings/tokens/"))
    response = client.post(f"/settings/tokens/{theirs.pk}/revoke/")
    assert response.status_code == 404 and f"No token {theirs.pk}." in body(response)
    assert client.post("/settings/tokens/999999/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None and not AuditEvent.objects.filter(action="token.revoke").exists()
    assert bearer(secret).get("/api/v1/releases/").status_code == 200


def test_expired_and_revoked_tokens_are_shown_as_such(client, alice):
    expired, _ = tokens.token_create(actor=alice, name="old", scopes=["registry:read"])
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    revoked, _ = tokens.token_create(actor=alice, name="gone", scopes=["registry:read"])
    tokens.token_revoke(token=revoked, actor=alice)
    active, _ = tokens.token_create(actor=alice, name="live", scopes=["registry:read"])
    ApiToken.objects.filter(pk=active.pk).update(last_used_at=timezone.now())
    client.force_login(alice)
    page = body(client.get("/settings/tokens/"))

    def row(token: ApiToken) -> str:
        return page.split(f'id="token-{token.pk}"', 1)[1].split("</tr>", 1)[0]

    assert 'badge bad">expired' in row(expired) and "Revoke…" in row(expired)
    assert 'badge bad">revoked' in row(revoked) and "Revoke…" not in row(revoked)
    assert 'badge ok">active' in row(active) and "never" not in row(active)


def test_hostile_token_names_are_escaped(client, alice):
    client.force_login(alice)
    name = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    created = client.post("/settings/tokens/new/", {"name": name, "scopes": ["registry:read"], "expires_in_days": "7"})
    assert created.status_code == 201
    for page in (body(created), body(client.get("/settings/tokens/"))):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_service_account_tokens_need_the_permission(client, alice, ci_bot, django_user_model):
    sam = make_user(django_user_model, "sam", ["integrations.change_serviceaccount"], is_staff=True)
    client.force_login(alice)
    form = body(client.get("/settings/tokens/"))
    assert 'name="username"' not in form
    refused = client.post("/settings/tokens/new/", {"name": "deploy", "scopes": ["registry:write"],
                                                "expires_in_days": "30", "username": "ci-bot"})
    assert refused.status_code == 403
    assert "Creating tokens for a service account needs integrations.change_serviceaccount." in body(refused)
    assert not ApiToken.objects.exists()

    client.force_login(sam)
    form = body(client.get("/settings/tokens/"))
    assert '<option value="ci-bot"' in form
    created = client.post("/settings/tokens/new/", {"name": "deploy", "scopes": ["registry:write"],
                                                "expires_in_days": "30", "username": "ci-bot"})
    assert created.status_code == 201
    token = ApiToken.objects.get(name="deploy")
    assert token.user == ci_bot and token.created_by == sam
    listing = body(client.get("/settings/tokens/"))
    assert "ci-bot" in listing and "service account</span>" in listing
    assert client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    client.force_login(alice)
    assert "deploy" not in body(client.get("/settings/tokens/"))


# --- webhooks ---------------------------------------------------------------------------------

def test_a_webhook_subscribed_in_the_console_shows_its_secret_once(client, hana, loopback):
    client.force_login(hana)
    assert 'id="subscribe"' in body(client.get("/settings/webhooks/"))
    created = client.post("/settings/webhooks/new/", {"url": HOOK, "events": ["", "release.live", "release.approved"],
                                                  "model": "", "description": "deploy bot"})
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    sub = WebhookSubscription.objects.get()
    assert SECRET_RE.findall(body(created)) == [sub.secret]
    assert "You will not see this secret again" in body(created)
    assert sub.owner == hana and sub.events == ["release.approved", "release.live"] and sub.model is None
    assert AuditEvent.objects.filter(action="webhook.create", object_id=str(sub.pk), actor=hana).count() == 1
    for url in ("/settings/webhooks/", f"/settings/webhooks/{sub.pk}/"):
        page = body(client.get(url))
        assert not SECRET_RE.search(page) and HOOK in page


def test_webhook_form_refusals_are_the_apis(client, hana, charlie, settings, alice):
    from registry.models import RegisteredModel

    RegisteredModel.objects.create(name="ranker", owner=alice, task="classification")
    client.force_login(charlie)
    page = body(client.get("/settings/webhooks/"))
    assert 'id="subscribe"' not in page and "integrations.add_webhooksubscription" in page
    response = client.post("/settings/webhooks/new/", {"url": HOOK, "events": ["release.live"]})
    assert response.status_code == 403 and API_DENIED in body(response)

    client.force_login(hana)
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    cases = [
        ({"url": HOOK, "events": ["release.live"]}, 400, "resolves to 127.0.0.1, a private, loopback or reserved"),
        ({"url": "javascript:alert(1)", "events": ["release.live"]}, 400, "url: Enter a valid URL."),
        ({"url": "https://8.8.8.8/x", "events": []}, 400, "events: This list may not be empty."),
        ({"url": "https://8.8.8.8/x", "events": ["release.exploded"]}, 400, "is not a valid choice"),
        ({"url": "https://8.8.8.8/x", "events": ["release.live"], "model": "nope"}, 404, "No model &#x27;nope&#x27;."),
    ]
    for data, status, message in cases:
        response = client.post("/settings/webhooks/new/", data)
        assert response.status_code == status, (data, body(response)[:300])
        assert message in body(response), (data, message)
    assert not WebhookSubscription.objects.exists()
    created = client.post("/settings/webhooks/new/", {"url": "https://8.8.8.8/x", "events": ["release.live"],
                                                  "model": "ranker"})
    assert created.status_code == 201
    assert WebhookSubscription.objects.get().model.name == "ranker"


def test_a_hostile_webhook_url_is_escaped(client, hana, loopback):
    client.force_login(hana)
    url = 'http://127.0.0.1:9/x?q="><script>alert(1)</script>'
    created = client.post("/settings/webhooks/new/", {"url": url, "events": ["release.live"],
                                                  "description": "<b onmouseover=alert(2)>hi</b>"})
    assert created.status_code == 201, body(created)[:300]
    sub = WebhookSubscription.objects.get()
    for page in (body(created), body(client.get("/settings/webhooks/")), body(client.get(f"/settings/webhooks/{sub.pk}/"))):
        assert "<script>alert(1)" not in page and "<b onmouseover" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_edit_disable_enable_and_delete_call_the_services(client, hana, loopback):
    sub = webhooks.subscription_create(owner=hana, url=HOOK, events=["release.live"])
    client.force_login(hana)
    edit = f"/settings/webhooks/{sub.pk}/edit/"
    response = client.post(edit, {"active": "false"})
    assert response.status_code == 302 and response["Location"] == f"/settings/webhooks/{sub.pk}/"
    sub.refresh_from_db()
    assert sub.active is False
    assert 'id="toggle-active">Enable' in body(client.get(f"/settings/webhooks/{sub.pk}/"))
    assert client.post(edit, {"active": "true"}).status_code == 302
    sub.refresh_from_db()
    assert sub.active is True
    assert AuditEvent.objects.filter(action="webhook.update", object_id=str(sub.pk)).count() == 2

    full = {"url": HOOK + "2", "events": ["", "release.failed", "release.rolled_back"], "description": "ops",
            "active": "true"}
    assert client.post(edit, full).status_code == 302
    sub.refresh_from_db()
    assert (sub.url, sub.events, sub.description) == (HOOK + "2", ["release.failed", "release.rolled_back"], "ops")
    assert client.post(edit, full).status_code == 302  # nothing changed: no service call, no audit row
    assert AuditEvent.objects.filter(action="webhook.update", object_id=str(sub.pk)).count() == 3

    refused = client.post(edit, {**full, "events": [""]})
    assert refused.status_code == 400 and "events: This list may not be empty." in body(refused)
    refused = client.post(edit, {**full, "url": "http://169.254.169.254/latest/meta-data/"})
    assert refused.status_code == 400 and "169.254.169.254" in body(refused)
    sub.refresh_from_db()
    assert sub.url == HOOK + "2" and sub.events == ["release.failed", "release.rolled_back"]

    assert client.get(f"/settings/webhooks/{sub.pk}/delete/").status_code == 405
    response = client.post(f"/settings/webhooks/{sub.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/settings/webhooks/"
    assert not WebhookSubscription.objects.filter(pk=sub.pk).exists()
    assert AuditEvent.objects.filter(action="webhook.delete", object_id=str(sub.pk), actor=hana).count() == 1


def test_changing_a_webhook_needs_the_apis_permissions(client, hana, django_user_model, loopback):
    viewer = make_user(django_user_model, "viewer", ["integrations.add_webhooksubscription"])
    sub = webhooks.subscription_create(owner=viewer, url=HOOK, events=["release.live"])
    delivery = WebhookDelivery.objects.create(subscription=sub, event="release.live", subject="r:1", payload={},
                                              status="failed", attempts=8)
    client.force_login(viewer)
    page = body(client.get(f"/settings/webhooks/{sub.pk}/"))
    assert 'id="redeliver-' not in page and 'id="toggle-active"' not in page and 'id="delete-open"' not in page
    for url in (f"/settings/webhooks/{sub.pk}/edit/", f"/settings/webhooks/{sub.pk}/delete/",
                f"/settings/webhook-deliveries/{delivery.pk}/redeliver/"):
        response = client.post(url, {"active": "false", "webhook": str(sub.pk)})
        assert response.status_code == 403 and API_DENIED in body(response), url
    sub.refresh_from_db()
    delivery.refresh_from_db()
    assert sub.active is True and delivery.status == "failed"


def deliveries(sub: WebhookSubscription, n: int) -> list[WebhookDelivery]:
    statuses = ["succeeded", "failed", "retrying", "pending"]
    return [WebhookDelivery.objects.create(
        subscription=sub, event="release.live", subject=f"releases.release:{i}", payload={"id": str(i), "n": i},
        status=statuses[i % 4], attempts=1 + i % 3, response_code=200 if i % 4 == 0 else 500,
        last_error="" if i % 4 == 0 else f"HTTP 500: <h1>boom {i}</h1>") for i in range(n)]


def test_delivery_log_pages_filters_and_redelivers(client, hana, loopback, django_capture_on_commit_callbacks):
    from django_tasks_db.models import DBTaskResult

    sub = webhooks.subscription_create(owner=hana, url=HOOK, events=["release.live"])
    rows = deliveries(sub, 30)
    client.force_login(hana)
    first = body(client.get(f"/settings/webhooks/{sub.pk}/"))
    assert first.count('<tr id="delivery-') == 25 and f'id="delivery-{rows[-1].pk}"' in first  # newest first
    assert "Page 1 of 2" in first and "<h1>boom" not in first and "&lt;h1&gt;boom 29&lt;/h1&gt;" in first
    second = body(client.get(f"/settings/webhooks/{sub.pk}/?page=2"))
    assert second.count('<tr id="delivery-') == 5 and f'id="delivery-{rows[0].pk}"' in second
    failed = body(client.get(f"/settings/webhooks/{sub.pk}/?status=failed"))
    assert failed.count('<tr id="delivery-') == 8 and 'badge ok">succeeded' not in failed

    listing = body(client.get("/settings/webhooks/"))
    assert 'badge bad">failed</span> HTTP 500' in listing  # the newest delivery (i = 29) failed

    target = rows[1]  # failed
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/settings/webhook-deliveries/{target.pk}/redeliver/", {"webhook": str(sub.pk)})
    assert response.status_code == 302
    assert response["Location"] == f"/settings/webhooks/{sub.pk}/#delivery-{target.pk}"
    target.refresh_from_db()
    assert target.status == "pending" and target.next_attempt_at is not None
    assert AuditEvent.objects.filter(action="webhook.redeliver", object_id=str(target.pk), actor=hana).count() == 1
    queued = DBTaskResult.objects.filter(task_path="integrations.tasks.deliver_webhook")
    assert [t.args_kwargs["args"] for t in queued] == [[target.pk]]


def test_another_users_webhook_and_deliveries_are_404s(client, hana, django_user_model, loopback):
    other = make_user(django_user_model, "otto", WEBHOOK_PERMS)
    sub = webhooks.subscription_create(owner=other, url=HOOK + "/otto-secret-path", events=["release.live"])
    delivery = deliveries(sub, 2)[1]
    client.force_login(hana)
    assert "otto-secret-path" not in body(client.get("/settings/webhooks/"))
    assert client.get(f"/settings/webhooks/{sub.pk}/").status_code == 404
    for url in (f"/settings/webhooks/{sub.pk}/edit/", f"/settings/webhooks/{sub.pk}/delete/"):
        response = client.post(url, {"active": "false"})
        assert response.status_code == 404 and f"No webhook {sub.pk}." in body(response), url
    response = client.post(f"/settings/webhook-deliveries/{delivery.pk}/redeliver/", {"webhook": str(sub.pk)})
    assert response.status_code == 404
    sub.refresh_from_db()
    delivery.refresh_from_db()
    assert sub.active is True and delivery.status == "failed"
    assert not AuditEvent.objects.filter(action__in=["webhook.update", "webhook.delete", "webhook.redeliver"]).exists()

    root = make_user(django_user_model, "root", [], is_superuser=True)
    client.force_login(root)  # as the API: a superuser sees every subscription, with its owner
    listing = body(client.get("/settings/webhooks/"))
    assert "otto-secret-path" in listing and "<td>otto</td>" in listing


# --- query counts -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_settings_pages_query_counts_do_not_grow_with_rows(client, django_user_model, ci_bot, loopback):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    sam = make_user(django_user_model, "sam", ["integrations.change_serviceaccount", *WEBHOOK_PERMS],
                    is_superuser=True)
    counts: dict[str, list[int]] = {}
    client.force_login(sam)
    for n in (3, 30):
        for i in range(n):
            tokens.token_create(actor=sam, name=f"t{n}-{i}", scopes=["registry:read"],
                                username="ci-bot" if i % 2 else None)
        sub = None
        for _ in range(n):
            sub = webhooks.subscription_create(owner=sam, url=HOOK, events=["release.live"])
            deliveries(sub, 2)
        deliveries(sub, n)
        for name, url in (("tokens", "/settings/tokens/"), ("webhooks", "/settings/webhooks/"),
                          ("delivery log", f"/settings/webhooks/{sub.pk}/")):
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200, url
            counts.setdefault(name, []).append(len(ctx))
    grown = {k: v for k, v in counts.items() if v[1] > v[0]}
    assert not grown, f"query count grew with list size: {grown}"
    assert max(max(v) for v in counts.values()) <= 15, counts
