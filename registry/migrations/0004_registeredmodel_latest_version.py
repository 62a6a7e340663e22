from django.db import migrations, models

from registry.models import newest_version_number


def backfill(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Each model's newest version number, the aggregate the model list used to compute per page."""
    versions = apps.get_model("registry", "ModelVersion")
    apps.get_model("registry", "RegisteredModel").objects.update(latest_version=newest_version_number(versions))


class Migration(migrations.Migration):
    dependencies = [("registry", "0003_idempotencykey")]
    operations = [
        migrations.AddField(
            model_name="registeredmodel", name="latest_version",
            field=models.PositiveIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
