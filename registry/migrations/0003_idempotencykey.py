"""IdempotencyKey moves into the registry, out of integrations, with its rows: every app's creates
use it, and the registry may import no app above it. State only, then a table and index rename
(``registry.moves``); integrations' 0002 then forgets the model in its own state."""
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

from registry.moves import move_content_type


class Migration(migrations.Migration):

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("registry", "0002_audit_append_only"),
        ("integrations", "0001_initial"),  # the table exists, with its rows
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="IdempotencyKey",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("key", models.CharField(max_length=255)),
                        ("method", models.CharField(max_length=10)),
                        ("path", models.CharField(max_length=500)),
                        ("fingerprint", models.CharField(blank=True, max_length=64)),
                        ("status_code", models.PositiveSmallIntegerField(blank=True, null=True)),
                        ("response", models.JSONField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "integrations_idempotencykey",
                        "indexes": [models.Index(fields=["created_at"], name="integration_created_e7b62e_idx")],
                        "constraints": [models.UniqueConstraint(fields=("user", "key"), name="one_idempotency_key_per_user")],
                    },
                ),
            ],
            database_operations=[],
        ),
        move_content_type("idempotencykey", old_app="integrations", new_app="registry"),
        migrations.AlterModelTable(name="idempotencykey", table=None),  # -> registry_idempotencykey
        migrations.RenameIndex(model_name="idempotencykey", new_name="idempotencykey_created_idx",
                               old_name="integration_created_e7b62e_idx"),
    ]
