"""Every console page runs a fixed number of SQL queries, whatever the list sizes: the same page
with 3 and with 30 rows in every list stays under one bound."""
from __future__ import annotations

import pytest

from tests.console.conftest import make_rows

BOUND = 40


def pages(model: str, release_id: int, job_id: int) -> list[str]:
    return ["/", f"/models/{model}/", f"/models/{model}/compare/", f"/models/{model}/compare/?" + "&".join(
        f"v={n}" for n in range(1, 31)), f"/models/{model}/upload/", f"/models/{model}/optimize/", f"/models/{model}/datasets/new/", "/new-model/",
        "/releases/awaiting-count/",
        "/releases/", f"/releases/{release_id}/", f"/releases/{release_id}/live/", f"/jobs/{job_id}/",
        "/endpoints/", "/audit/"]


@pytest.mark.django_db
@pytest.mark.parametrize("rows", [3, 30])
def test_every_page_has_a_bounded_query_count(client, alice, bob, rows, django_assert_max_num_queries):
    from optimization.models import OptimizationJob
    from releases.models import Release

    for i in range(rows):  # many models for the models list, one of them with many versions
        make_rows(alice, rows if i == 0 else 1, name=f"m{i:02d}")
    release = Release.objects.filter(version__model__name="m00").order_by("-pk").first()
    job = OptimizationJob.objects.filter(source__model__name="m00").first()
    client.force_login(bob)
    for url in pages("m00", release.pk, job.pk):
        with django_assert_max_num_queries(BOUND):
            response = client.get(url)
        assert response.status_code == 200, (url, response.content[:500])


@pytest.mark.django_db
def test_query_counts_do_not_grow_with_rows(client, alice, bob):
    """Measured exactly: the 30-row page costs no more queries than the 3-row page."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from optimization.models import OptimizationJob
    from releases.models import Release

    counts: dict[str, list[int]] = {}
    client.force_login(bob)
    for n, name in ((3, "small"), (30, "large")):
        make_rows(alice, n, name=name)
        release = Release.objects.filter(version__model__name=name).order_by("-pk").first()
        job = OptimizationJob.objects.filter(source__model__name=name).first()
        for index, url in enumerate(pages(name, release.pk, job.pk)):
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200, url
            counts.setdefault(str(index), []).append(len(ctx))
    grown = {pages("m", 0, 0)[int(k)]: v for k, v in counts.items() if v[1] > v[0]}
    assert not grown, f"query count grew with list size: {grown}"
