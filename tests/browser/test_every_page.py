"""Every console page, in Chromium: no horizontal page scroll at 390 px (wide tables scroll in
their own box), and an axe-core scan with no serious or critical violation. With
MODELYARD_SCREENSHOTS set, each page is also saved at 1400 px and 390 px."""
from __future__ import annotations

import pytest

from tests.browser.conftest import DESKTOP, PHONE, login, no_horizontal_overflow, screenshot
from tests.console.conftest import make_rows

pytestmark = pytest.mark.django_db(transaction=True)


def serious_violations(page) -> list[str]:  # type: ignore[no-untyped-def]
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    return [f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
            for v in violations if v["impact"] in ("serious", "critical")]


@pytest.fixture
def console_data(alice, bob):  # type: ignore[no-untyped-def]
    from optimization.models import OptimizationJob
    from releases.models import Release

    model = make_rows(alice, 12, name="digits-demo")
    for i in range(3):
        make_rows(alice, 1, name=f"other-{i}")
    pending = Release.objects.filter(version__model=model, state="pending_approval").order_by("-pk").first()
    live = Release.objects.get(version__model=model, state="live")
    rolling = Release.objects.filter(version__model=model).exclude(pk__in=[pending.pk, live.pk]).first()
    Release.objects.filter(pk=rolling.pk).update(state="rolling_back")  # the deploy worker stages it again
    rolling.promotions.update(state="rolling_back", previous_version=1)
    job = OptimizationJob.objects.filter(source__model=model).first()
    OptimizationJob.objects.filter(pk=job.pk).update(status="running", progress=42.0, stage="prune: epoch 2/5",
                                                     log="[10:00:01] loading\n[10:00:03] training\n")
    return {"model": model.name, "pending": pending.pk, "live": live.pk, "rolling": rolling.pk, "job": job.pk}


def urls(data: dict) -> dict[str, str]:
    m = data["model"]
    return {"models": "/", "model": f"/models/{m}/", "compare": f"/models/{m}/compare/",
            "upload": f"/models/{m}/upload/", "dataset": f"/models/{m}/datasets/new/", "new-model": "/new-model/", "optimize": f"/models/{m}/optimize/", "job": f"/jobs/{data['job']}/",
            "releases": "/releases/", "release-pending": f"/releases/{data['pending']}/",
            "release-live": f"/releases/{data['live']}/", "release-rolling-back": f"/releases/{data['rolling']}/",
            "endpoints": "/endpoints/", "audit": "/audit/"}


@pytest.mark.parametrize("viewport,suffix", [(PHONE, "phone"), (DESKTOP, "desktop")])
def test_every_page_fits_a_phone_and_passes_axe(new_page, console_data, viewport, suffix):
    page = new_page(viewport)
    page.goto("/login/")
    problems = {}
    if suffix == "phone" and not no_horizontal_overflow(page):
        problems["login"] = ["horizontal overflow"]
    if found := serious_violations(page):
        problems.setdefault("login", []).extend(found)
    screenshot(page, f"login-{suffix}")
    login(page, "bob")
    for name, url in urls(console_data).items():
        response = page.goto(url)
        assert response.status == 200, (url, response.status)
        page.wait_for_load_state("networkidle") if name not in ("job", "release-rolling-back") else None  # polling
        if suffix == "phone" and not no_horizontal_overflow(page):
            width = page.evaluate("document.documentElement.scrollWidth")
            problems.setdefault(name, []).append(f"horizontal overflow: {width}px > 390px")
        if found := serious_violations(page):
            problems.setdefault(name, []).extend(found)
        screenshot(page, f"{name}-{suffix}")
    assert not problems, problems
