"""The out-of-process inspector and its warm spare: real child processes, real TensorFlow."""
from __future__ import annotations

import json
import logging
import re
import time

import pytest

from registry import inspection, inspector
from registry.inspect_worker import IDLE_EXIT
from registry.models import ModelVersion
from tests.conftest import files_under, upload


def request_for(path) -> dict:  # type: ignore[no-untyped-def]
    return inspection.subprocess_request(path, path.name)


@pytest.fixture(autouse=True)
def no_spare_left():  # type: ignore[no-untyped-def]
    """Every test starts without a spare and leaves none running."""
    yield
    spare = inspector._take_spare()
    if spare is not None:
        spare.kill()
        spare.communicate()


def test_a_prewarmed_spare_does_the_next_inspection_then_a_fresh_process_does(settings, artifacts) -> None:
    settings.INSPECT_SPARE_IDLE_SECONDS = 60
    assert inspector.prewarm() is True
    spare_pid = inspector._spare.pid
    assert inspector.prewarm() is False  # one spare at a time

    out, _, status = inspector.run(request_for(artifacts["zip"]))
    reply = json.loads(out)
    assert status == 0 and reply["pid"] == spare_pid
    assert reply["inspection"]["signature"] == inspection._inspect(artifacts["zip"], "model.zip").signature
    assert inspector._spare is None  # used once

    out, _, status = inspector.run(request_for(artifacts["zip"]))
    assert status == 0 and json.loads(out)["pid"] != spare_pid


def test_an_unused_spare_exits_on_its_own_and_inspection_still_works(settings, artifacts) -> None:
    settings.INSPECT_SPARE_IDLE_SECONDS = 1
    inspector.prewarm()
    spare = inspector._spare
    deadline = time.monotonic() + 60  # the import of TensorFlow comes before the idle wait
    while spare.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert spare.returncode == IDLE_EXIT

    out, _, status = inspector.run(request_for(artifacts["tflite"]))
    assert status == 0 and json.loads(out)["pid"] != spare.pid


def test_prewarming_can_be_turned_off(settings) -> None:
    settings.INSPECT_SPARE_IDLE_SECONDS = 0
    assert inspector.prewarm() is False and inspector._spare is None


@pytest.mark.django_db
def test_a_large_upload_is_inspected_by_the_spare_started_before_its_body_was_read(
        api, registered, artifacts, settings, storage_root, caplog) -> None:
    settings.INSPECT_IN_SUBPROCESS_BYTES = 1024  # the zip counts as large
    caplog.set_level(logging.INFO, logger="registry.inspector")

    response = upload(api, "digits", artifacts["zip"])

    assert response.status_code == 201, response.content
    started = re.findall(r"started a spare inspector \(pid (\d+)\)", caplog.text)
    used = re.findall(r"in the spare inspector \(pid (\d+)\)", caplog.text)
    assert len(started) == 1 and used == started
    assert ModelVersion.objects.get().signature == inspection._inspect(artifacts["zip"], "model.zip").signature
    assert files_under(storage_root / "tmp") == []


@pytest.mark.django_db
def test_a_small_upload_starts_no_inspector(api, registered, artifacts, settings, caplog) -> None:
    settings.INSPECT_IN_SUBPROCESS_BYTES = 1 << 40
    caplog.set_level(logging.INFO, logger="registry.inspector")
    assert upload(api, "digits", artifacts["zip"]).status_code == 201
    assert "inspector" not in caplog.text


@pytest.mark.django_db
def test_a_body_over_the_artifact_limit_starts_no_inspector(api, registered, settings, caplog, tmp_path) -> None:
    settings.INSPECT_IN_SUBPROCESS_BYTES = 1024
    settings.MAX_ARTIFACT_BYTES = 2048
    big = tmp_path / "model.zip"
    big.write_bytes(b"x" * (256 * 1024))  # announced as larger than any acceptable body: 413 before it is read
    caplog.set_level(logging.INFO, logger="registry.inspector")
    response = upload(api, "digits", big)
    assert response.status_code == 413, response.content
    assert "inspector" not in caplog.text and inspector._spare is None
