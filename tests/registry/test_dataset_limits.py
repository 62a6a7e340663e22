"""Dataset bombs (issue 10, defect 5): a .npz is refused on its packed/unpacked ratio and on the
sizes its .npy headers declare, before any array is built in the web process; honest datasets
still go through. ``tracemalloc`` (numpy reports its buffers to it) shows what the request
allocated."""
from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest

from registry import datasets, services
from registry.models import Dataset
from tests import factories
from tests.conftest import post_dataset
from tests.registry.conftest import assert_error

pytestmark = pytest.mark.django_db
MiB = 1024 * 1024


def traced_peak(call):  # type: ignore[no-untyped-def]
    """(result, peak bytes Python and numpy allocated during ``call()``)."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_ratio_bomb_is_refused_before_any_array_is_built(api, version1, snapshot, tmp_path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((2 * MiB, 8), np.float32))  # 64 MiB of zeros in ~65 KB
    assert path.stat().st_size < 100_000
    before = snapshot()

    response, peak = traced_peak(lambda: post_dataset(api, "digits", path, role="eval"))

    error = assert_error(response, 400, "unsafe_archive", "x.npy", "67108992 bytes", "over the 200x limit",
                         "MODELYARD_MAX_COMPRESSION_RATIO")
    ratio = 67108992 / zipfile.ZipFile(path).getinfo("x.npy").compress_size
    assert f"{ratio:,.0f}x" in error["message"]
    assert peak < 8 * MiB, peak  # nothing like the 64 MiB array
    before.assert_nothing_left()


def test_a_header_declaring_more_than_the_dataset_limit_is_refused_from_the_header(
        api, version1, snapshot, tmp_path) -> None:
    """1.28 GB declared (under the 8 GiB archive limit, over the 1 GiB dataset limit) in 64 bytes."""
    path = factories.lying_npz(tmp_path / "liar.npz", (40_000_000, 8))
    before = snapshot()

    response, peak = traced_peak(lambda: post_dataset(api, "digits", path, role="eval"))

    assert_error(response, 400, "unsafe_archive", "[40000000, 8]", "1280000000 bytes",
                 "MODELYARD_MAX_DATASET_UNPACKED_BYTES", "refused before loading")
    assert peak < 8 * MiB, peak
    before.assert_nothing_left()


def test_an_honest_dataset_over_the_dataset_limit_is_refused(api, version1, snapshot, settings, tmp_path) -> None:
    settings.MAX_DATASET_UNPACKED_BYTES = 64 * 1024
    path = tmp_path / "big.npz"
    np.savez(path, x=np.random.default_rng(0).random((4096, 8), dtype=np.float32))  # 128 KiB
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 400, "unsafe_archive", "unpacks to 131200 bytes", "65536",
                 "MODELYARD_MAX_DATASET_UNPACKED_BYTES")
    before.assert_nothing_left()


def test_a_header_that_disagrees_with_the_zip_sizes_is_corrupt(api, version1, snapshot, tmp_path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (4, 8)})
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 100)  # 128 bytes declared, 100 held
    before = snapshot()

    response = post_dataset(api, "digits", path, role="eval")

    assert_error(response, 400, "corrupt_artifact", "declares 128 bytes of data but holds 100")
    before.assert_nothing_left()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_an_ordinary_dataset_is_accepted_without_loading_its_arrays(save, api, version1, storage_root,
                                                                    tmp_path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((500_000, 8), dtype=np.float32), rng.integers(0, 3, 500_000)  # 16 MB + 4 MB
    path = tmp_path / "eval.npz"
    save(path, x=x, y=y)

    response = post_dataset(api, "digits", path, role="eval")

    assert response.status_code == 201, response.content
    assert response.json()["arrays"] == {"x": {"shape": [500_000, 8], "dtype": "float32"},
                                         "y": {"shape": [500_000], "dtype": "int64"}}
    assert Dataset.objects.get().arrays == response.json()["arrays"]
    assert list((storage_root / "tmp").iterdir()) == []
    # What the upload runs on the file: validated piece by piece, never materialized. (Measured
    # apart from the request: the test client builds the whole multipart body in memory.)
    described, peak = traced_peak(lambda: datasets.describe_npz(path))
    assert described == response.json()["arrays"]
    assert peak < 8 * MiB < x.nbytes, peak  # 1 MiB pieces and the decompressor's buffers
    # A worker still gets the very arrays back.
    loaded = services.dataset_arrays(Dataset.objects.get())
    assert np.array_equal(loaded["x"], x) and np.array_equal(loaded["y"], y)

