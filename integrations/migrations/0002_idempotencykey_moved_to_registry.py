"""IdempotencyKey now belongs to the registry (registry/migrations/0003 took its table and rows):
forget it here, in the state only."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("integrations", "0001_initial"),
        ("registry", "0003_idempotencykey"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="IdempotencyKey")],
                                            database_operations=[]),
    ]
