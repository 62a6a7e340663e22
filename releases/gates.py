"""Release gates ("blessing"): evaluated from recorded metrics when a release is submitted.

Each gate yields ``{"gate", "passed", "threshold", "value", "message"}``; a gate whose threshold
is unset (no policy, no environment default) is not evaluated at all.
"""
from __future__ import annotations

from typing import Any

from metrics.models import VersionMetrics
from registry.models import Dataset, ModelVersion
from releases.deploy import signatures
from releases.models import Environment, Release, ReleasePolicy

SIGNATURE_GATE = "signature_compatible"
GATE_FIELDS = ("max_accuracy_drop", "max_p95_latency_ms", "min_size_reduction", "required_datasets")


def effective_policy(version: ModelVersion, environment: Environment) -> dict[str, Any]:
    """The environment's defaults, overridden field by field by the model's policy."""
    policy = {f: getattr(environment, f) for f in GATE_FIELDS}
    override = ReleasePolicy.objects.filter(model=version.model, environment=environment).first()
    if override:
        policy.update({f: getattr(override, f) for f in GATE_FIELDS if getattr(override, f) is not None})
    return policy


def baseline_for(version: ModelVersion, environment: Environment) -> ModelVersion | None:
    """What "accuracy drop" is measured against: the version live in this environment, else the
    parent of a variant, else nothing (a first release has no baseline)."""
    live = (Release.objects.filter(environment=environment, version__model=version.model,
                                   state=Release.State.LIVE).exclude(version=version)
            .select_related("version").order_by("-updated_at").first())
    if live:
        return live.version
    return version.parent


def _metrics(version: ModelVersion) -> list[VersionMetrics]:
    return list(VersionMetrics.objects.filter(version=version).order_by("-created_at"))


def _result(gate: str, passed: bool, threshold: Any, value: Any, message: str) -> dict[str, Any]:
    return {"gate": gate, "passed": passed, "threshold": threshold, "value": value, "message": message}


def _common(version: ModelVersion, baseline: ModelVersion) -> tuple[dict[str, Any], dict[str, Any]] | None:
    mine = {m.eval_dataset_id: m.metrics for m in _metrics(version)}
    for theirs in _metrics(baseline):
        if theirs.eval_dataset_id in mine:
            return mine[theirs.eval_dataset_id], theirs.metrics
    return None


def accuracy_gate(version: ModelVersion, baseline: ModelVersion | None, threshold: float) -> dict[str, Any]:
    if baseline is None:
        return _result("max_accuracy_drop", True, threshold, None,
                       "No live version in this environment and no parent: nothing to compare with.")
    pair = _common(version, baseline)
    if pair is None:
        return _result("max_accuracy_drop", False, threshold, None,
                       f"No metrics for v{version.number} and v{baseline.number} on a common eval dataset; measure "
                       f"them first (POST /api/v1/optimization-jobs/ with recipe {{\"technique\": \"measure\"}}).")
    mine, theirs = pair
    if mine.get("accuracy") is not None and theirs.get("accuracy") is not None:
        drop = float(theirs["accuracy"]) - float(mine["accuracy"])
        ok = drop <= threshold + 1e-12
        return _result("max_accuracy_drop", ok, threshold, round(drop, 6),
                       f"accuracy {mine['accuracy']:.4f} vs {theirs['accuracy']:.4f} for v{baseline.number}: "
                       f"drop {drop * 100:.2f} pt {'within' if ok else 'over'} the {threshold * 100:.2f} pt limit")
    if mine.get("mse") is not None and theirs.get("mse") is not None:
        base = float(theirs["mse"]) or 1e-12
        rise = (float(mine["mse"]) - base) / base
        ok = rise <= threshold + 1e-12
        return _result("max_accuracy_drop", ok, threshold, round(rise, 6),
                       f"MSE {mine['mse']:.4g} vs {theirs['mse']:.4g} for v{baseline.number}: relative rise "
                       f"{rise:.2%} {'within' if ok else 'over'} the {threshold:.2%} limit")
    return _result("max_accuracy_drop", False, threshold, None, "The metrics hold neither accuracy nor MSE.")


def latency_gate(version: ModelVersion, threshold: float) -> dict[str, Any]:
    measured = [m.metrics.get("latency_ms_p95") for m in _metrics(version) if m.metrics.get("latency_ms_p95")]
    if not measured:
        return _result("max_p95_latency_ms", False, threshold, None, f"v{version.number} has no latency measured.")
    value = float(measured[0])
    ok = value <= threshold
    return _result("max_p95_latency_ms", ok, threshold, value,
                   f"p95 latency {value:.3f} ms {'within' if ok else 'over'} the {threshold:g} ms limit")


def size_gate(version: ModelVersion, threshold: float) -> dict[str, Any]:
    ratios = [m.metrics.get("gzipped_ratio") for m in _metrics(version) if m.reference_id]
    ratios = [r for r in ratios if r]
    if not ratios:
        return _result("min_size_reduction", False, threshold, None,
                       f"v{version.number} is not a measured variant: no size reduction to check.")
    value = float(ratios[0])
    ok = value >= threshold
    return _result("min_size_reduction", ok, threshold, round(value, 3),
                   f"{value:.2f}x smaller gzipped than its parent ({'meets' if ok else 'below'} the {threshold:g}x "
                   "minimum)")


def datasets_gate(version: ModelVersion, roles: list[str]) -> dict[str, Any]:
    present = set(Dataset.objects.filter(model=version.model, role__in=roles).values_list("role", flat=True))
    missing = [r for r in roles if r not in present]
    if "eval" in roles and not missing and not _metrics(version):
        missing.append('eval metrics for this version (measure it: recipe {"technique": "measure"})')
    ok = not missing
    return _result("required_datasets", ok, roles, sorted(present),
                   "all required datasets present" if ok else f"missing: {', '.join(missing)}")


def live_version(version: ModelVersion, environment: Environment) -> ModelVersion | None:
    live = (Release.objects.filter(environment=environment, version__model=version.model,
                                   state__in=[Release.State.LIVE, Release.State.CANARY]).exclude(version=version)
            .select_related("version").order_by("-updated_at").first())
    return live.version if live else None


def signature_gate(version: ModelVersion, live: ModelVersion) -> dict[str, Any]:
    """Clients of the live version keep working: same input names and dtypes, compatible shapes,
    every output they read. ``value``: the differences, each spelled out."""
    old, new = live.signature or {}, version.signature or {}
    changes = signatures.differences(
        signatures.from_document(old.get("inputs", [])), signatures.from_document(old.get("outputs", [])),
        signatures.from_document(new.get("inputs", [])), signatures.from_document(new.get("outputs", [])),
        old_name=f"live v{live.number}")
    if not changes:
        return _result(SIGNATURE_GATE, True, f"v{live.number}", [],
                       f"serving signature compatible with live v{live.number}")
    return _result(SIGNATURE_GATE, False, f"v{live.number}", changes,
                   f"serving signature breaks clients of live v{live.number}: {'; '.join(changes)}")


def approved_signature_change(release: Release) -> list[str]:
    """The signature differences an approver accepted with an override reason ([] if none): the
    promotion reports them instead of refusing, and the release warns its clients."""
    if not release.override_reason:
        return []
    for gate in release.gates or []:
        if gate.get("gate") == SIGNATURE_GATE and not gate.get("passed"):
            return list(gate.get("value") or [])
    return []


def evaluate(version: ModelVersion, environment: Environment) -> tuple[list[dict[str, Any]], bool, ModelVersion | None]:
    policy = effective_policy(version, environment)
    baseline = baseline_for(version, environment)
    results = []
    if policy["required_datasets"]:
        results.append(datasets_gate(version, list(policy["required_datasets"])))
    if policy["max_accuracy_drop"] is not None:
        results.append(accuracy_gate(version, baseline, float(policy["max_accuracy_drop"])))
    if policy["max_p95_latency_ms"] is not None:
        results.append(latency_gate(version, float(policy["max_p95_latency_ms"])))
    if policy["min_size_reduction"] is not None:
        results.append(size_gate(version, float(policy["min_size_reduction"])))
    live = live_version(version, environment)
    if live is not None:  # nothing to break before a first release
        results.append(signature_gate(version, live))
    return results, all(r["passed"] for r in results), baseline
