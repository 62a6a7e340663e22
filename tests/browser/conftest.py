"""Browser tests: Debian's real Chromium driven by Playwright against pytest-django's live server,
with a real task worker process (``manage.py db_worker``) for jobs and promotions.

Playwright's own browser download is never used: ``CHROMIUM`` (default /usr/bin/chromium) is.
Set ``MODELYARD_SCREENSHOTS=<dir>`` to also save screenshots of each page visited.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENGINEER_PERMS, PASSWORD, make_user, missing
from tests.releases.conftest import RELEASE_PERMS

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1400, "height": 900}


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser, live_server) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """``new_page(viewport)`` opens a fresh context (own cookies: one user each)."""
    contexts = []

    def make(viewport: dict[str, int] = DESKTOP) -> Any:
        context = browser.new_context(viewport=viewport, base_url=live_server.url)
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def login(page: Any, username: str) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))


def no_horizontal_overflow(page: Any) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def screenshot(page: Any, name: str) -> None:
    where = os.environ.get("MODELYARD_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


@pytest.fixture
def alice(django_user_model):  # type: ignore[no-untyped-def]
    """The ML engineer: uploads, optimizes, requests releases; also an approver — so only the
    four-eyes rule stops her deciding her own production release."""
    return make_user(django_user_model, "alice", ENGINEER_PERMS + RELEASE_PERMS + ["releases.approve_release"])


@pytest.fixture
def bob(django_user_model):  # type: ignore[no-untyped-def]
    """The release manager: approves, promotes and rolls back (but requests nothing)."""
    return make_user(django_user_model, "bob", ["releases.approve_release", "releases.change_release"])


@pytest.fixture
def digits(alice, digits_files):  # type: ignore[no-untyped-def]
    """Model 'digits' with v1 (a tf_keras SavedModel) and train/eval/calibration datasets."""
    from registry import services
    from registry.uploads import StagedFile

    model = services.model_create(name="digits", owner=alice, task="classification", tags=["vision"],
                                  description="scikit-learn digits, 64 pixels → 10 classes")
    v1 = services.version_create(model=model, staged=StagedFile.from_path(digits_files["model"]), actor=alice,
                                 description="baseline")
    for role in ("train", "eval", "calibration"):
        services.dataset_create(model=model, staged=StagedFile.from_path(digits_files[role]), role=role, actor=alice,
                                check_version=v1, name=f"{role}.npz")
    return model
