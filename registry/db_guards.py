"""Database-level protection for append-only tables: UPDATE and DELETE fail in the database
itself, so neither a bug nor a raw query can rewrite history. Used by migration 0002 and by the
test suite (which must lift the guard to empty tables between transactional tests)."""
from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

APPEND_ONLY_TABLES = ["registry_auditevent"]
MESSAGE = "append-only table: rows cannot be updated or deleted"


def _sqlite_sql(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table}: {MESSAGE}'); END",
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table}: {MESSAGE}'); END",
    ]


def _postgres_sql(table: str) -> list[str]:
    return [
        f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN RAISE EXCEPTION '{table}: {MESSAGE}'; END $$",
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
    ]


def install(connection: BaseDatabaseWrapper, tables: list[str] | None = None) -> None:
    builders = {"sqlite": _sqlite_sql, "postgresql": _postgres_sql}
    builder = builders.get(connection.vendor)
    if builder is None:
        return  # other databases: the model-level guard still applies
    with connection.cursor() as cursor:
        for table in tables or APPEND_ONLY_TABLES:
            for statement in builder(table):
                cursor.execute(statement)


def uninstall(connection: BaseDatabaseWrapper, tables: list[str] | None = None) -> None:
    with connection.cursor() as cursor:
        for table in tables or APPEND_ONLY_TABLES:
            if connection.vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            elif connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
