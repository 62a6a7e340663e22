"""Hand-written SQL for the statements every API call makes.

The ORM builds its SQL again on every call, and for "the tags of these 50 versions" building cost
fifteen times the query itself (each id of an ``IN`` list goes through the lookup machinery:
0.77 ms against 0.05 ms, ``bench/registry.py``'s page of versions on SQLite). The few statements
made on every request or every page, with nothing to filter but ids or a hash — the API token
with its user (``integrations.tokens``), the user's permissions (``registry.auth_backend``), a
page's tags, aliases and metrics, the next version number — are written as SQL here: table and
column names come from the models (``table``, ``column``), values are always bound parameters,
rows become instances converted as the ORM converts them (``instance``), and the statements are
plain SQL that SQLite and PostgreSQL both run. Everything else uses the ORM.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)


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


def columns(model: type[models.Model]) -> str:
    """Every concrete column of ``model``, qualified, in field order (what ``instance`` reads)."""
    return ", ".join(column(model, f.name) for f in model._meta.concrete_fields)


def instance(model: type[M], values: Sequence[Any]) -> M:
    """A model instance from the values of ``columns(model)``, converted as the ORM converts them
    (JSON text parsed, SQLite's datetimes made aware, booleans from integers)."""
    fields = model._meta.concrete_fields
    converted = [_convert(value, converters) for value, converters in zip(values, _converters(model))]
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def _convert(value: Any, converters: list[tuple[Callable[..., Any], Any]]) -> Any:
    for convert, expression in converters:
        value = convert(value, expression, connection)
    return value


@functools.cache
def _converters(model: type[models.Model]) -> list[list[tuple[Callable[..., Any], Any]]]:
    found = []
    for field in model._meta.concrete_fields:
        expression = field.get_col(model._meta.db_table)
        found.append([(c, expression) for c in [*connection.ops.get_db_converters(expression),
                                                *field.get_db_converters(connection)]])
    return found


def instances_where(model: type[M], column_name: str, value: Any) -> list[M]:
    """Rows of ``model`` whose field ``column_name`` equals ``value``, as instances (one statement)."""
    return [instance(model, row) for row in fetch(
        f"SELECT {columns(model)} FROM {table(model)} WHERE {column(model, column_name)} = %s", [value])]
