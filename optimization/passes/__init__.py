"""The optimization techniques, and recipes that chain them.

A recipe is JSON:

* one technique: ``{"technique": "prune", "params": {"sparsity": 0.8}}``
* a pipeline: ``{"pipeline": [{"technique": "prune", "params": {...}},
  {"technique": "ptq_int8", "params": {"int8_io": true}}]}``
* a named pipeline: ``{"technique": "prune_int8"}`` or ``{"pipeline": "prune_int8"}`` or just
  ``"prune_int8"``; its ``params`` may override a step's, keyed by that step's technique:
  ``{"technique": "prune_int8", "params": {"prune": {"sparsity": 0.9}}}``.

``parse_recipe`` validates every step's params and that each step accepts what the previous one
produces; ``check_source_kind`` checks the first step against the source version's format.
"""
from __future__ import annotations

import copy
from typing import Any

from .base import Pass, PassError
from .cluster import Cluster
from .distill import Distill
from .finetune import Finetune
from .fp16 import FP16
from .prune import Prune
from .ptq import PTQDynamic, PTQFloat16, PTQInt8
from .qat import QAT

PASSES: dict[str, Pass] = {p.name: p for p in (
    PTQDynamic(), PTQFloat16(), PTQInt8(), Prune(), Cluster(), QAT(), Distill(), Finetune(), FP16())}

NAMED_PIPELINES: dict[str, list[dict[str, Any]]] = {
    "prune_int8": [{"technique": "prune", "params": {}}, {"technique": "ptq_int8", "params": {}}],
    "cluster_int8": [{"technique": "cluster", "params": {}}, {"technique": "ptq_int8", "params": {}}],
    "sparsity_preserving_cluster": [
        {"technique": "prune", "params": {}},
        {"technique": "cluster", "params": {"preserve_sparsity": True}}],
    "pqat": [{"technique": "prune", "params": {}}, {"technique": "qat", "params": {"scheme": "pqat"}}],
    "cqat": [{"technique": "cluster", "params": {}}, {"technique": "qat", "params": {"scheme": "cqat"}}],
}

# Auto-compression measures these (most to least aggressive) and registers the best one by its
# objective among those within the accuracy budget (optimization/budget.py).
AUTO_CANDIDATES: list[dict[str, Any]] = [
    {"label": "prune 90% + int8", "recipe": {"pipeline": [
        {"technique": "prune", "params": {"sparsity": 0.9}}, {"technique": "ptq_int8", "params": {}}]}},
    {"label": "prune 80% + int8", "recipe": {"pipeline": [
        {"technique": "prune", "params": {"sparsity": 0.8}}, {"technique": "ptq_int8", "params": {}}]}},
    {"label": "prune 80% + PQAT", "recipe": {"pipeline": [
        {"technique": "prune", "params": {"sparsity": 0.8}},
        {"technique": "qat", "params": {"scheme": "pqat"}}]}},
    {"label": "cluster 16 + int8", "recipe": {"pipeline": [
        {"technique": "cluster", "params": {"number_of_clusters": 16}},
        {"technique": "ptq_int8", "params": {}}]}},
    {"label": "cluster 16 + CQAT", "recipe": {"pipeline": [
        {"technique": "cluster", "params": {"number_of_clusters": 16}},
        {"technique": "qat", "params": {"scheme": "cqat"}}]}},
    {"label": "prune 50% + int8", "recipe": {"pipeline": [
        {"technique": "prune", "params": {"sparsity": 0.5}}, {"technique": "ptq_int8", "params": {}}]}},
    {"label": "int8", "recipe": {"technique": "ptq_int8", "params": {}}},
    {"label": "dynamic range", "recipe": {"technique": "ptq_dynamic", "params": {}}},
    {"label": "float16", "recipe": {"technique": "ptq_float16", "params": {}}},
]

KIND_NOUN = {"keras": "a Keras model", "saved_model": "a SavedModel", "tflite": "a TFLite model"}
SOURCE_NOUN = {"keras": "a Keras model", "saved_model": "a SavedModel without Keras metadata",
               "tflite": "a TFLite flatbuffer"}


def get_pass(name: str) -> Pass:
    try:
        return PASSES[name]
    except (KeyError, TypeError):
        raise PassError(f"unknown technique {name!r}; known: {', '.join(sorted(PASSES))}; "
                        f"pipelines: {', '.join(sorted(NAMED_PIPELINES))}") from None


def _needs(p: Pass) -> str:
    return " or ".join(KIND_NOUN.get(k, k) for k in sorted(p.accepts))


def _named(name: str, overrides: Any) -> list[dict[str, Any]]:
    steps = copy.deepcopy(NAMED_PIPELINES[name])
    if overrides is None:
        return steps
    if not isinstance(overrides, dict):
        raise PassError(f"{name}: params must be an object keyed by step technique")
    techniques = [s["technique"] for s in steps]
    unknown = sorted(set(overrides) - set(techniques))
    if unknown:
        raise PassError(f"{name}: params keys must name its steps ({', '.join(techniques)}); "
                        f"got {', '.join(map(repr, unknown))}")
    for step in steps:
        extra = overrides.get(step["technique"]) or {}
        if not isinstance(extra, dict):
            raise PassError(f"{name}: params for {step['technique']!r} must be an object")
        step["params"] = {**step["params"], **extra}
    return steps


def _raw_steps(recipe: Any) -> list[dict[str, Any]]:
    if isinstance(recipe, str):
        recipe = {"technique": recipe}
    if not isinstance(recipe, dict):
        raise PassError("a recipe must be an object with 'technique' or 'pipeline'")
    if "pipeline" in recipe and "technique" in recipe:
        raise PassError("a recipe has either 'technique' or 'pipeline', not both")
    if "pipeline" in recipe:
        extra = set(recipe) - {"pipeline", "params", "label"}
        if extra:
            raise PassError(f"unknown recipe key(s): {', '.join(sorted(extra))}")
        pipe = recipe["pipeline"]
        if isinstance(pipe, str):
            if pipe not in NAMED_PIPELINES:
                raise PassError(f"unknown pipeline {pipe!r}; known: {', '.join(sorted(NAMED_PIPELINES))}")
            return _named(pipe, recipe.get("params"))
        if not isinstance(pipe, list) or not pipe:
            raise PassError("'pipeline' must be a non-empty list of steps or a pipeline name")
        steps = []
        for i, step in enumerate(pipe, 1):
            if isinstance(step, str):
                step = {"technique": step}
            if not isinstance(step, dict) or "technique" not in step:
                raise PassError(f"pipeline step {i} must be an object with a 'technique'")
            extra = set(step) - {"technique", "params"}
            if extra:
                raise PassError(f"pipeline step {i}: unknown key(s) {', '.join(sorted(extra))}")
            if step["technique"] in NAMED_PIPELINES and step["technique"] not in PASSES:
                steps.extend(_named(step["technique"], step.get("params")))
            else:
                steps.append({"technique": step["technique"], "params": step.get("params") or {}})
        return steps
    if "technique" in recipe:
        extra = set(recipe) - {"technique", "params", "label"}
        if extra:
            raise PassError(f"unknown recipe key(s): {', '.join(sorted(extra))}")
        name = recipe["technique"]
        if isinstance(name, str) and name in NAMED_PIPELINES and name not in PASSES:
            return _named(name, recipe.get("params"))
        return [{"technique": name, "params": recipe.get("params") or {}}]
    raise PassError("a recipe needs 'technique' (one step) or 'pipeline' (a list of steps)")


def parse_recipe(recipe: Any) -> list[tuple[Pass, dict[str, Any]]]:
    """The validated steps of a recipe, each as (pass, params with defaults filled in)."""
    steps: list[tuple[Pass, dict[str, Any]]] = []
    for raw in _raw_steps(recipe):
        p = get_pass(raw["technique"])
        params = p.validate_params(raw["params"])
        if steps:
            prev = steps[-1][0]
            if prev.produces not in p.accepts:
                raise PassError(f"{p.name} cannot run after {prev.name}: it needs {_needs(p)}, "
                                f"{prev.name} produces {KIND_NOUN.get(prev.produces, prev.produces)}")
        steps.append((p, params))
    return steps


def check_source_kind(steps: list[tuple[Pass, dict[str, Any]]], source_kind: str,
                      version: Any = None) -> None:
    """Raise PassError if the first step cannot take the source version's format."""
    if not steps:
        raise PassError("the recipe has no steps")
    first = steps[0][0]
    if source_kind not in first.accepts:
        what = f"version {version}" if version is not None else "the source version"
        noun = getattr(first, "label", first.name)
        raise PassError(f"{noun} needs {_needs(first)}; {what} is "
                        f"{SOURCE_NOUN.get(source_kind, source_kind)}")


def required_data(steps: list[tuple[Pass, dict[str, Any]]]) -> set[str]:
    """Dataset roles the recipe needs ("train", "calibration")."""
    out: set[str] = set()
    for p, _ in steps:
        out |= set(p.needs)
    return out


__all__ = ["AUTO_CANDIDATES", "NAMED_PIPELINES", "PASSES", "check_source_kind", "get_pass",
           "parse_recipe", "required_data"]
