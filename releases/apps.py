from django.apps import AppConfig


class ReleasesConfig(AppConfig):
    name = "releases"
    stale_work_reapers = {"promotion": "releases.promotion.promotions_reap_stale"}  # run by `manage.py reap_jobs`

    def ready(self) -> None:
        from releases import checks  # noqa: F401  (registers the system checks)
