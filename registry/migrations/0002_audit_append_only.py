from django.db import migrations

from registry import db_guards


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    db_guards.install(schema_editor.connection)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    db_guards.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
