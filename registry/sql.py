"""Hand-written reads for the lookups every page of the API makes.

The ORM builds its SQL again on every call, and for "the tags of these 50 versions" building cost
fifteen times the query itself (each id of an ``IN`` list goes through the lookup machinery:
0.77 ms against 0.05 ms, ``bench/registry.py``'s page of versions on SQLite). The few reads made
once per page, with nothing to filter but a list of ids, are written as SQL here: table and column
names come from the models (``table``, ``column``), values are always bound parameters, and the
statements are plain SQL that SQLite and PostgreSQL both run. Everything else uses the ORM.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from django.db import connection, models


def table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def column(model: type[models.Model], field: str) -> str:
    """``"table"."column"`` of a model's field (a foreign key's ``_id`` column for a relation)."""
    return f"{table(model)}.{name(model, field)}"


def name(model: type[models.Model], field: str) -> str:
    """The field's column alone (``SET`` and ``RETURNING`` take it unqualified)."""
    return connection.ops.quote_name(model._meta.get_field(field).column)


def placeholders(values: Sequence[Any]) -> str:
    """``%s, %s, …``: one bound parameter per value of an ``IN`` list (never the values themselves)."""
    return ", ".join(["%s"] * len(values))


def fetch(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def aware(value: datetime) -> datetime:
    """A datetime column as the ORM gives it: SQLite hands back naive UTC, PostgreSQL aware."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
