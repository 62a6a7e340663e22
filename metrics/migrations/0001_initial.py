"""VersionMetrics moves here from optimization with its rows: state only, then a table rename
(``registry.moves``; optimization's 0004 drops it from optimization's state)."""
import django.db.models.deletion
from django.db import migrations, models

from registry.moves import move_content_type


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("registry", "0002_audit_append_only"),
        ("optimization", "0003_version_metrics_plural"),  # the table exists, with its rows
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="VersionMetrics",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("metrics", models.JSONField()),
                        ("samples", models.JSONField(blank=True, default=dict, help_text="Sample inputs with this version's outputs, for serving checks.")),
                        ("outputs_sha256", models.CharField(blank=True, help_text="Blob (.npy) of this version's outputs on the eval set.", max_length=64)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("eval_dataset", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+", to="registry.dataset")),
                        ("reference", models.ForeignKey(blank=True, help_text="The parent the ratios/deltas/agreement compare with (null: none).", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="registry.modelversion")),
                        ("version", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="metrics", to="registry.modelversion")),
                    ],
                    options={
                        "verbose_name_plural": "version metrics",
                        "db_table": "optimization_versionmetrics",
                        "constraints": [models.UniqueConstraint(fields=("version", "eval_dataset"), name="one_metrics_per_eval")],
                    },
                ),
            ],
            database_operations=[],
        ),
        move_content_type("versionmetrics", old_app="optimization", new_app="metrics"),
        migrations.AlterModelTable(name="versionmetrics", table=None),  # -> metrics_versionmetrics
    ]
