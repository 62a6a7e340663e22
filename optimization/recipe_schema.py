"""The OpenAPI schema of a recipe, built from the passes themselves so it cannot drift from what
``plan_recipe`` accepts: a ``oneOf`` whose branches are told apart by their required keys and the
``technique`` (or ``pipeline``) value -- one technique with its own params, a list pipeline, a
named pipeline, ``auto`` with its budget, or ``measure``."""
from __future__ import annotations

from typing import Any

from optimization.budget import OBJECTIVES
from optimization.passes import AUTO_CANDIDATES, NAMED_PIPELINES, PASSES
from optimization.passes.common import Param

_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _param(p: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _TYPES[p.kind], "nullable": True}  # null: the default
    if p.choices is not None:
        schema["enum"] = list(p.choices)
    if p.lo is not None:
        schema.update(minimum=p.lo, exclusiveMinimum=p.lo_open)
    if p.hi is not None:
        schema.update(maximum=p.hi, exclusiveMaximum=p.hi_open)
    return schema


def _params(spec: dict[str, Param]) -> dict[str, Any]:
    return {"type": "object", "nullable": True, "additionalProperties": False,
            "properties": {name: _param(p) for name, p in spec.items()}}


def _obj(properties: dict[str, Any], required: list[str], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, "required": required,
            "additionalProperties": False}


def _const(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


LABEL = {"type": "string", "description": "Shown on the job instead of the recipe."}


def _step(name: str) -> dict[str, Any]:
    p = PASSES[name]
    return _obj({"technique": _const(name), "params": _params(p.spec)}, ["technique"],
                f"{name}: {getattr(p, 'description', '')}".strip())


def _named_params(name: str) -> dict[str, Any]:
    steps = [s["technique"] for s in NAMED_PIPELINES[name]]
    return {"type": "object", "nullable": True, "additionalProperties": False,
            "description": "Overrides, keyed by step technique.",
            "properties": {t: _params(PASSES[t].spec) for t in steps}}


def recipe_schema() -> dict[str, Any]:
    techniques = sorted(PASSES)
    named = sorted(n for n in NAMED_PIPELINES if n not in PASSES)
    named_steps = [_obj({"technique": _const(n), "params": _named_params(n)}, ["technique"], f"Named pipeline {n}")
                   for n in named]
    step = {"oneOf": [*(_step(t) for t in techniques), *named_steps, _const(*techniques, *named)]}
    branches = [
        *({**_step(t), "properties": {**_step(t)["properties"], "label": LABEL}} for t in techniques),
        *(_obj({"technique": _const(n), "params": _named_params(n), "label": LABEL}, ["technique"],
               f"Named pipeline {n}: " + " then ".join(s["technique"] for s in NAMED_PIPELINES[n]))
          for n in named),
        _obj({"pipeline": {"type": "string", "enum": named}, "params": {"type": "object", "nullable": True},
              "label": LABEL}, ["pipeline"], "A named pipeline by name; params keyed by step technique."),
        _obj({"pipeline": {"type": "array", "minItems": 1, "items": step},
              "params": {"description": "Ignored for a list pipeline."},
              "label": LABEL}, ["pipeline"], "Steps run in order; each must accept what the previous produces."),
        _obj({"technique": _const("auto"), "label": LABEL, "params": {
            "type": "object", "nullable": True, "additionalProperties": False, "properties": {
                "max_accuracy_drop": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
                "relative": {"type": "boolean"},
                "objective": {"type": "string", "enum": list(OBJECTIVES)},
                "candidates": {"type": "array", "minItems": 1,
                               "items": {"type": "string", "enum": [c["label"] for c in AUTO_CANDIDATES]}},
            }}}, ["technique"], "Auto-compression: try every candidate, keep the best within the budget."),
        _obj({"technique": _const("measure"), "params": {"type": "object", "nullable": True, "maxProperties": 0}},
             ["technique"], "Measure the version itself on the eval dataset; registers nothing."),
    ]
    return {"oneOf": branches, "description": "A recipe: one technique, a pipeline, a named pipeline, auto or measure."}
