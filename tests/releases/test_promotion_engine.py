"""Promotion engine against real model server processes, through the public gRPC API only."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from releases.deploy import repository_engine as engine
from releases.deploy.repository_engine import (
    PromotionFailed, RepositoryEndpoint, VersionExists, model_entry, policy_versions, read_config)
from releases.tfserving import (
    EndpointUnreachable, LoadFailed, ModelServerConfig, ServingTimeout, SignatureMismatch, TFServingClient,
    VersionNotLoaded, WrongAnswers)
from tests.factories import Models
from tests.processes import free_port
from tests.releases.serving_fixtures import LiveServer
from releases.traffic import Traffic

TOLERANCE = (1e-5, 1e-6)
HAPPY_STEPS = ["lock", "check", "stage", "load", "available", "validate", "promote", "done"]


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """Tests share one server: each uses its own model name."""
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]


def promote(server: LiveServer, models: Models, model: str, version: int, source: str,
            samples_of: str | None = None, **kwargs) -> engine.PromotionResult:
    return engine.promote(server.endpoint, model_name=model, version=version,
                          saved_model_src=models[source], samples=models.samples[samples_of or source],
                          tolerance=TOLERANCE, deadline_s=30, **kwargs)


def served_by(server: LiveServer, model: str, label: str, models: Models, source: str = "a") -> int:
    sample = models.samples[source]
    _, version = server.client.predict(model, {"x": np.asarray(sample["inputs"], np.float32)}, label=label)
    return version


def entry_of(server: LiveServer, model: str):
    return model_entry(read_config(server.config_path), model)


def assert_config_consistent(server: LiveServer, model: str) -> None:
    """The file parses, every label names a version in the policy, and that version is AVAILABLE."""
    config = ModelServerConfig()
    text_format.Parse(server.config_path.read_text(), config)
    entry = model_entry(config, model)
    versions = policy_versions(entry)
    status = server.client.model_status(model)
    for label, version in entry.version_labels.items():
        assert version in versions, (label, version, versions)
        assert status[version][0] == "AVAILABLE", (label, version, status)


# --- staging, no server --------------------------------------------------------------------------

def test_stage_publishes_by_rename_and_never_overwrites(tiny_models: Models, tmp_path: Path) -> None:
    staged = engine.stage_version(tmp_path, "m", 1, tiny_models["a"])
    assert staged.created and staged.path == tmp_path / "m" / "1"
    assert engine.tree_sha256(staged.path) == engine.tree_sha256(tiny_models["a"]) == staged.tree_sha256
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]  # no .tmp-* left behind

    again = engine.stage_version(tmp_path, "m", 1, tiny_models["a"])  # identical: idempotent no-op
    assert not again.created and again.path == staged.path

    with pytest.raises(VersionExists, match="never reused"):
        engine.stage_version(tmp_path, "m", 1, tiny_models["b"])
    assert engine.tree_sha256(staged.path) == engine.tree_sha256(tiny_models["a"])

    with pytest.raises(engine.ArtifactMismatch):
        engine.stage_version(tmp_path, "m", 2, tiny_models["b"], expected_sha256="0" * 64)
    assert not (tmp_path / "m" / "2").exists()
    ok = engine.stage_version(tmp_path, "m", 2, tiny_models["b"],
                              expected_sha256=engine.tree_sha256(tiny_models["b"]))
    assert ok.created


def test_config_written_atomically_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    config = engine.with_model(engine.empty_config(), "m", "/models/m", {2, 1}, {"stable": 1})
    engine.write_config_atomically(path, config)
    assert read_config(path) == config
    assert "versions: 1" in path.read_text() and [p.name for p in tmp_path.iterdir()] == ["models.config"]
    assert read_config(tmp_path / "missing.config") == engine.empty_config()


# --- promotions against a live server --------------------------------------------------------------

def test_first_promotion_to_an_empty_endpoint(model_server: LiveServer, tiny_models: Models,
                                              model_name: str) -> None:
    steps: list[tuple[str, str]] = []
    result = promote(model_server, tiny_models, model_name, 1, "a", on_step=lambda s, m: steps.append((s, m)))

    assert [s for s, _ in steps] == HAPPY_STEPS
    assert (result.previous_version, result.new_version) == (None, 1)
    entry = entry_of(model_server, model_name)
    assert entry.base_path == str(model_server.base_dir / model_name)
    assert policy_versions(entry) == {1}
    assert dict(entry.version_labels) == {"stable": 1, "canary": 1}
    assert served_by(model_server, model_name, "stable", tiny_models) == 1
    assert sorted(p.name for p in (model_server.base_dir / model_name).iterdir()) == ["1"]
    assert_config_consistent(model_server, model_name)


def test_second_promotion_moves_stable_and_keeps_previous_loaded(
        model_server: LiveServer, tiny_models: Models, model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    result = promote(model_server, tiny_models, model_name, 2, "b")

    assert (result.previous_version, result.new_version) == (1, 2)
    entry = entry_of(model_server, model_name)
    assert policy_versions(entry) == {1, 2}
    assert dict(entry.version_labels) == {"stable": 2, "canary": 2}
    status = model_server.client.model_status(model_name)
    assert status[1][0] == status[2][0] == "AVAILABLE"
    assert served_by(model_server, model_name, "stable", tiny_models) == 2
    assert_config_consistent(model_server, model_name)

    # A third promotion serves {stable, new} = {2, 3}: version 1 is unloaded.
    promote(model_server, tiny_models, model_name, 3, "c")
    assert policy_versions(entry_of(model_server, model_name)) == {2, 3}
    assert model_server.client.model_status(model_name)[1][0] == "END"

    # retire: only 3 stays loaded; directories of older versions go.
    retired = engine.retire(model_server.endpoint, model_name, {3}, delete_dirs=True, grace_s=0.2)
    assert retired.dropped == (2,)
    assert sorted(p.name for p in (model_server.base_dir / model_name).iterdir()) == ["3"]
    assert served_by(model_server, model_name, "stable", tiny_models) == 3
    assert_config_consistent(model_server, model_name)


class CountingEndpoint(RepositoryEndpoint):
    """The real endpoint, counting the config reloads it sends (instrumentation, not a mock)."""

    model_name: str
    reloads: list[dict[str, int]]

    def apply(self, config: ModelServerConfig, timeout: float | None = None) -> None:
        super().apply(config, timeout)
        self.reloads.append(dict(model_entry(config, self.model_name).version_labels))


def test_a_promotion_is_two_reloads_and_labels_move_only_in_the_second(
        model_server: LiveServer, tiny_models: Models, model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    endpoint = CountingEndpoint(model_server.base_dir, model_server.config_path, model_server.client)
    endpoint.model_name, endpoint.reloads = model_name, []

    engine.promote(endpoint, model_name=model_name, version=2, saved_model_src=tiny_models["b"],
                   samples=tiny_models.samples["b"], tolerance=TOLERANCE, deadline_s=30)

    # load (labels unchanged, version 2 validated by number), then stable + canary -> 2
    assert endpoint.reloads == [{"stable": 1, "canary": 1}, {"stable": 2, "canary": 2}]
    assert served_by(model_server, model_name, "stable", tiny_models) == 2


def test_promotions_delete_directories_of_retired_versions(model_server: LiveServer, tiny_models: Models,
                                                           model_name: str) -> None:
    model_dir = model_server.base_dir / model_name
    for version, source in ((1, "a"), (2, "b"), (3, "c")):
        promote(model_server, tiny_models, model_name, version, source)
    # Promotion 3 dropped version 1 from the policy; its directory goes as soon as the server has
    # unloaded it: in that promotion's clean step, or at the latest in the next one.
    result = promote(model_server, tiny_models, model_name, 4, "a")

    on_disk = sorted(p.name for p in model_dir.iterdir())
    assert "1" not in on_disk and {"3", "4"} <= set(on_disk) <= {"2", "3", "4"}, on_disk
    assert policy_versions(entry_of(model_server, model_name)) == {3, 4}
    assert [s for s, _ in result.steps if s != "clean"] == HAPPY_STEPS
    assert served_by(model_server, model_name, "stable", tiny_models) == 4
    # The version kept for rollback is still there, loaded: rollback stays one reload.
    engine.rollback(model_server.endpoint, model_name=model_name, to_version=3)
    assert served_by(model_server, model_name, "stable", tiny_models, source="c") == 3
    assert_config_consistent(model_server, model_name)


def test_promotion_can_keep_retired_directories(model_server: LiveServer, tiny_models: Models,
                                                model_name: str) -> None:
    for version, source in ((1, "a"), (2, "b"), (3, "c"), (4, "a")):
        result = promote(model_server, tiny_models, model_name, version, source, delete_retired=False)
        assert "clean" not in [s for s, _ in result.steps]
    assert sorted(p.name for p in (model_server.base_dir / model_name).iterdir()) == ["1", "2", "3", "4"]


def test_rollback_flips_stable_back_in_one_reload(model_server: LiveServer, tiny_models: Models,
                                                  model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    promote(model_server, tiny_models, model_name, 2, "b")

    started = time.monotonic()
    change = engine.rollback(model_server.endpoint, model_name=model_name, to_version=1)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, elapsed
    assert (change.stable_before, change.stable_after) == (2, 1)
    assert served_by(model_server, model_name, "stable", tiny_models) == 1
    assert served_by(model_server, model_name, "canary", tiny_models) == 1
    assert policy_versions(entry_of(model_server, model_name)) == {1, 2}  # 2 stays loaded
    assert_config_consistent(model_server, model_name)

    with pytest.raises(VersionNotLoaded, match="re-stage"):
        engine.rollback(model_server.endpoint, model_name=model_name, to_version=7)


def test_canary_only_then_complete(model_server: LiveServer, tiny_models: Models, model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    result = promote(model_server, tiny_models, model_name, 2, "b", canary_only=True)

    assert result.canary_only and [s for s, _ in result.steps][-2:] == ["hold", "done"]
    assert dict(entry_of(model_server, model_name).version_labels) == {"stable": 1, "canary": 2}
    assert served_by(model_server, model_name, "stable", tiny_models) == 1
    assert served_by(model_server, model_name, "canary", tiny_models) == 2

    change = engine.complete_canary(model_server.endpoint, model_name)
    assert (change.stable_before, change.stable_after) == (1, 2)
    assert served_by(model_server, model_name, "stable", tiny_models) == 2
    assert policy_versions(entry_of(model_server, model_name)) == {1, 2}
    assert_config_consistent(model_server, model_name)


# --- faults ----------------------------------------------------------------------------------------

def test_endpoint_down_changes_nothing(tiny_models: Models, tmp_path: Path) -> None:
    config_path = tmp_path / "models.config"
    config_path.write_text("model_config_list {\n}\n")
    before = config_path.read_bytes()
    client = TFServingClient(f"127.0.0.1:{free_port()}", timeout=2)
    endpoint = RepositoryEndpoint(tmp_path / "models", config_path, client)

    started = time.monotonic()
    with pytest.raises(PromotionFailed) as info:
        engine.promote(endpoint, model_name="m", version=1, saved_model_src=tiny_models["a"],
                       samples=tiny_models.samples["a"], deadline_s=10)
    client.close()

    assert time.monotonic() - started < 5
    error = info.value
    assert error.step == "check" and isinstance(error.reason, EndpointUnreachable)
    assert "does not answer; nothing was staged or changed" in str(error)
    assert config_path.read_bytes() == before
    assert not (tmp_path / "models").exists()  # not even the lock file


def test_corrupt_savedmodel_fails_and_restores(model_server: LiveServer, tiny_models: Models,
                                               model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    before = model_server.config_path.read_text()
    steps: list[str] = []

    x = np.asarray(tiny_models.samples["a"]["inputs"], np.float32)
    with Traffic(model_server.client.grpc_target, model_name, x) as traffic, pytest.raises(PromotionFailed) as info:
        promote(model_server, tiny_models, model_name, 2, "corrupt", samples_of="a",
                on_step=lambda s, m: steps.append(s))
    assert traffic.log and not traffic.failures() and traffic.versions() == {1}

    error = info.value
    assert error.step == "available" and isinstance(error.reason, LoadFailed), error
    assert "Version 2" in str(error) and "failed to load" in str(error)
    assert error.restored and steps[-2:] == ["restore", "failed"]
    assert model_server.config_path.read_text() == before
    assert not (model_server.base_dir / model_name / "2").exists()
    assert model_server.client.model_status(model_name)[2][0] == "END"
    assert served_by(model_server, model_name, "stable", tiny_models) == 1
    assert_config_consistent(model_server, model_name)


def test_corrupt_first_promotion_leaves_no_model(model_server: LiveServer, tiny_models: Models,
                                                 model_name: str) -> None:
    before = model_server.config_path.read_text()
    with pytest.raises(PromotionFailed) as info:
        promote(model_server, tiny_models, model_name, 1, "corrupt", samples_of="a")
    assert isinstance(info.value.reason, LoadFailed), info.value
    assert model_server.config_path.read_text() == before
    assert entry_of(model_server, model_name) is None
    assert not (model_server.base_dir / model_name / "1").exists()


def test_wrong_answers_fail_validation_and_restore(model_server: LiveServer, tiny_models: Models,
                                                   model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    before = model_server.config_path.read_text()

    # Model b has a's signature but other weights; the recorded answers are a's.
    x = np.asarray(tiny_models.samples["a"]["inputs"], np.float32)
    with Traffic(model_server.client.grpc_target, model_name, x) as traffic, pytest.raises(PromotionFailed) as info:
        promote(model_server, tiny_models, model_name, 2, "b", samples_of="a")
    assert traffic.log and not traffic.failures() and traffic.versions() == {1}

    error = info.value
    assert error.step == "validate" and isinstance(error.reason, WrongAnswers), error
    assert "answered differently from the recorded outputs" in str(error)
    assert model_server.config_path.read_text() == before
    assert dict(entry_of(model_server, model_name).version_labels) == {"stable": 1, "canary": 1}
    assert not (model_server.base_dir / model_name / "2").exists()
    assert served_by(model_server, model_name, "stable", tiny_models) == 1
    assert_config_consistent(model_server, model_name)


def test_deadline_passing_fails_and_restores(model_server: LiveServer, tiny_models: Models,
                                             model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    before = model_server.config_path.read_text()
    with pytest.raises(PromotionFailed) as info:
        engine.promote(model_server.endpoint, model_name=model_name, version=2,
                       saved_model_src=tiny_models["b"], samples=tiny_models.samples["b"], deadline_s=1e-6)
    assert isinstance(info.value.reason, ServingTimeout) and "deadline" in str(info.value)
    assert model_server.config_path.read_text() == before
    assert not (model_server.base_dir / model_name / "2").exists()
    assert served_by(model_server, model_name, "stable", tiny_models) == 1


def test_server_dying_mid_promotion_restores_the_file(launch_server, tiny_models: Models,
                                                      model_name: str) -> None:
    server = launch_server(0)
    promote(server, tiny_models, model_name, 1, "a")
    before = server.config_path.read_text()

    def kill_when_available(step: str, message: str) -> None:
        if step == "available":
            server.process.kill()
            server.process.wait()

    with pytest.raises(PromotionFailed) as info:
        promote(server, tiny_models, model_name, 2, "b", on_step=kill_when_available)

    error = info.value
    assert error.step == "validate" and isinstance(error.reason, EndpointUnreachable), error
    assert not error.restored and isinstance(error.restore_error, EndpointUnreachable)
    assert "unreachable" in str(error) and "did not take it" in str(error)
    # The file is back, so a restarted server serves what it served before; the version directory
    # is kept because the server may still hold it.
    assert server.config_path.read_text() == before
    assert (server.base_dir / model_name / "2").is_dir()


def test_concurrent_promotions_are_serialized(model_server: LiveServer, tiny_models: Models,
                                              model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    events: list[tuple[int, str]] = []
    results: dict[int, object] = {}

    def run(version: int, source: str) -> None:
        try:
            results[version] = promote(model_server, tiny_models, model_name, version, source,
                                       on_step=lambda s, m: events.append((version, s)))
        except Exception as exc:  # reported below
            results[version] = exc

    threads = [threading.Thread(target=run, args=(2, "b")), threading.Thread(target=run, args=(3, "c"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(isinstance(r, engine.PromotionResult) for r in results.values()), results
    order = [v for v, _ in events]
    first = order[0]
    # One promotion ran start to finish, then the other: no interleaving of their steps. The second
    # may also report "clean" (version 1 left the policy and its directory was deleted).
    assert order == [first] * order.count(first) + [5 - first] * order.count(5 - first), events
    for version in (2, 3):
        assert [s for v, s in events if v == version and s != "clean"] == HAPPY_STEPS, events
    last = 5 - first
    entry = entry_of(model_server, model_name)
    assert dict(entry.version_labels) == {"stable": last, "canary": last}
    assert policy_versions(entry) == {2, 3}
    assert served_by(model_server, model_name, "stable", tiny_models) == last
    assert_config_consistent(model_server, model_name)


def test_promotion_under_traffic_drops_no_request(model_server: LiveServer, tiny_models: Models,
                                                  model_name: str) -> None:
    """Three promotions in a row (1 -> 2 -> 3 -> 4) while `stable` gets a request every ~5 ms."""
    promote(model_server, tiny_models, model_name, 1, "a")
    x = np.asarray(tiny_models.samples["a"]["inputs"], np.float32)
    windows: list[tuple[int, float, float]] = []  # (new version, promotion began, promote() returned)
    with Traffic(model_server.client.grpc_target, model_name, x) as traffic:
        time.sleep(0.3)
        for version, source in ((2, "b"), (3, "c"), (4, "a")):
            began = time.monotonic()
            promote(model_server, tiny_models, model_name, version, source)
            windows.append((version, began, time.monotonic()))
            time.sleep(0.3)
    log = traffic.log
    during = sum(1 for sent, _, _ in log if any(b <= sent < r for _, b, r in windows))
    counts = {v: sum(1 for e in log if e[1] == v) for v in sorted(traffic.versions())}
    print(f"\ntraffic during 3 promotions: {len(log)} requests, {len(traffic.failures())} failed, "
          f"served by version {counts}, {during} sent while a promotion was running "
          f"({sum(r - b for _, b, r in windows):.3f} s in all)")

    assert not traffic.failures(), traffic.failures()[:3]
    assert traffic.versions() == {1, 2, 3, 4}
    ends = [b for _, b, _ in windows[1:]] + [float("inf")]
    for (new, began, returned), next_began in zip(windows, ends):
        in_window = {v for sent, v, _ in log if began <= sent < returned}
        assert in_window <= {new - 1, new}, (new, in_window)       # the old or the new one
        after = {v for sent, v, _ in log if returned <= sent < next_began}
        assert after == {new}, (new, after)                          # after the flip: the new one
    served = [v for _, v, _ in log]
    assert served == sorted(served)  # never back to an older version


def test_signature_change_fails_validation(model_server: LiveServer, tiny_models: Models,
                                           model_name: str) -> None:
    promote(model_server, tiny_models, model_name, 1, "a")
    with pytest.raises(PromotionFailed) as info:
        promote(model_server, tiny_models, model_name, 2, "renamed", samples_of="a")
    assert info.value.step == "validate" and isinstance(info.value.reason, SignatureMismatch)
    assert "no input 'x'" in str(info.value) and "features" in str(info.value)
    assert policy_versions(entry_of(model_server, model_name)) == {1}
    assert served_by(model_server, model_name, "stable", tiny_models) == 1


def test_lock_is_held_across_processes(model_server: LiveServer, tiny_models: Models,
                                       model_name: str) -> None:
    lock = model_server.base_dir / engine.LOCK_NAME
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiting = RepositoryEndpoint(model_server.base_dir, model_server.config_path, model_server.client,
                                     lock_timeout_s=0.5)
        with pytest.raises(PromotionFailed) as info:
            engine.promote(waiting, model_name=model_name, version=1, saved_model_src=tiny_models["a"],
                           samples=tiny_models.samples["a"])
        assert info.value.step == "lock" and "still holds" in str(info.value)
        assert not (model_server.base_dir / model_name).exists()
    finally:
        holder.terminate()
        holder.wait(timeout=10)
    promote(model_server, tiny_models, model_name, 1, "a")  # the lock is free again
    assert served_by(model_server, model_name, "stable", tiny_models) == 1


# --- a server that polls models.config ------------------------------------------------------------

def test_file_and_reload_agree_when_the_server_polls_the_config(
        launch_server, tiny_models: Models, model_name: str) -> None:
    server = launch_server(1)  # --model_config_file_poll_wait_seconds=1
    promote(server, tiny_models, model_name, 1, "a")
    promote(server, tiny_models, model_name, 2, "b")

    # A reload alone (not written to the file) is undone by the next poll...
    config = read_config(server.config_path)
    entry = model_entry(config, model_name)
    entry.version_labels["stable"] = 1
    server.client.reload_config(config)
    assert served_by(server, model_name, "stable", tiny_models) == 1
    deadline = time.monotonic() + 5
    while served_by(server, model_name, "stable", tiny_models) != 2:
        assert time.monotonic() < deadline, "the poll did not re-apply models.config"
        time.sleep(0.2)

    # ...while what the engine did (file + reload) survives polls.
    engine.rollback(server.endpoint, model_name=model_name, to_version=1)
    for _ in range(3):
        time.sleep(1.0)
        assert served_by(server, model_name, "stable", tiny_models) == 1
    assert_config_consistent(server, model_name)
    assert "Failed to reload model config" not in server.output()


# --- a promotion whose process dies between steps ----------------------------------------------------

@pytest.mark.parametrize("killed_after", ["load", "promote"])
def test_a_killed_promotion_is_recovered(
        model_server: LiveServer, tiny_models: Models, model_name: str, killed_after: str) -> None:
    """A process promoting v2 is SIGKILLed after its `load` step (v2 loaded beside v1, labels not
    moved) or after `promote` (stable already on v2, `done` never reached): nothing restored it.
    The driver's ``recover`` (what the reaper calls) puts stable back on v1 and drops v2."""
    from releases.deploy import EndpointSpec, driver_for

    promote(model_server, tiny_models, model_name, 1, "a")
    promoting = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from releases.deploy import repository_engine as engine\n"
         "from releases.tfserving import TFServingClient\n"
         f"endpoint = engine.RepositoryEndpoint({str(model_server.base_dir)!r}, {str(model_server.config_path)!r}, "
         f"TFServingClient({model_server.client.grpc_target!r}))\n"
         "def on_step(step, message):\n"
         f"    if step == {killed_after!r}:\n"
         "        print('paused', flush=True)\n"
         "        time.sleep(60)\n"
         f"engine.promote(endpoint, model_name={model_name!r}, version=2, saved_model_src={str(tiny_models['b'])!r}, "
         f"samples={tiny_models.samples['b']!r}, on_step=on_step)\n"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert promoting.stdout.readline().strip() == "paused"
    finally:
        promoting.kill()
        promoting.wait(timeout=10)
    assert policy_versions(entry_of(model_server, model_name)) == {1, 2}  # what the dead promotion left
    assert served_by(model_server, model_name, "stable", tiny_models) == (2 if killed_after == "promote" else 1)

    driver = driver_for(EndpointSpec(name="killed", kind="model_repository", grpc_target=model_server.client.grpc_target,
                                     repository_path=model_server.base_dir, config_path=model_server.config_path))
    driver.recover(model_name, 2, release_id=7, previous_version=1)

    assert served_by(model_server, model_name, "stable", tiny_models) == 1
    assert policy_versions(entry_of(model_server, model_name)) == {1}
    assert sorted(p.name for p in (model_server.base_dir / model_name).iterdir()) == ["1"]
    assert_config_consistent(model_server, model_name)
    driver.recover(model_name, 2, release_id=7, previous_version=1)  # again: nothing left to do
    assert served_by(model_server, model_name, "stable", tiny_models) == 1
