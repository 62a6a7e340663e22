"""VersionMetrics now belongs to the metrics app (metrics/migrations/0001 took its table and rows):
forget it here, in the state only."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("optimization", "0003_version_metrics_plural"),
        ("metrics", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="VersionMetrics")],
                                            database_operations=[]),
    ]
