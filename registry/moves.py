"""Moving a model from one app to another without touching its rows (for migrations).

The pattern (``metrics/migrations/0001``, ``registry/migrations/0003``): the new app's migration
claims the model in its *state* only (``SeparateDatabaseAndState``, ``db_table`` = the old table),
relabels its content type (``move_content_type``) and renames the table to the new app's default
name; the old app's next migration drops the model from its state only. The rows, their ids, the
permissions and whoever holds them stay as they were.
"""
from __future__ import annotations

import functools
from typing import Any

from django.db import migrations


def move_content_type(model: str, *, old_app: str, new_app: str) -> migrations.RunPython:
    """Relabel ``old_app.model``'s ContentType as ``new_app.model``, so the model's permissions
    (and the users and groups holding them) and admin log entries follow it. Reversible. A new
    database has no content types yet during ``migrate`` (they are made after it): nothing to do."""
    return migrations.RunPython(functools.partial(relabel_content_type, model=model, src=old_app, dst=new_app),
                                functools.partial(relabel_content_type, model=model, src=new_app, dst=old_app))


def relabel_content_type(apps: Any, schema_editor: Any, *, model: str, src: str, dst: str) -> None:
    content_types = apps.get_model("contenttypes", "ContentType").objects
    if not content_types.filter(app_label=dst, model=model).exists():
        content_types.filter(app_label=src, model=model).update(app_label=dst)
