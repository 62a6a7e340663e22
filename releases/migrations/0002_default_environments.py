from django.db import migrations

DEFAULTS = [
    {"name": "staging", "description": "Pre-production; the requester may approve their own release.",
     "four_eyes": False, "auto_approve": False, "max_accuracy_drop": 0.02, "required_datasets": ["eval"],
     "batching": {"max_batch_size": 32, "batch_timeout_micros": 2000, "max_enqueued_batches": 100,
                  "num_batch_threads": 4, "allowed_batch_sizes": [8, 16, 32]}},
    {"name": "production", "description": "Live traffic; four-eyes approval.", "four_eyes": True,
     "auto_approve": False, "max_accuracy_drop": 0.01, "required_datasets": ["eval"],
     "batching": {"max_batch_size": 64, "batch_timeout_micros": 1000, "max_enqueued_batches": 200,
                  "num_batch_threads": 8, "allowed_batch_sizes": [8, 16, 32, 64]},
     "gpu_memory_fraction": 0.9},
]


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    Environment = apps.get_model("releases", "Environment")
    for values in DEFAULTS:
        Environment.objects.get_or_create(name=values["name"], defaults=values)


class Migration(migrations.Migration):
    dependencies = [("releases", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
