from django.db import migrations

from releases.environments import ensure_default_environments


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    ensure_default_environments(apps.get_model("releases", "Environment"))


class Migration(migrations.Migration):
    dependencies = [("releases", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
