"""Inspection unpacks what loading a SavedModel reads, once (issue 14): the files of ``assets/``
that the graph names are written, those it never opens are only read through (CRC, bomb budget),
and the stored artifact is the uploaded archive, byte for byte, assets and all.

Hostile archives whose bad member is one inspection does not write are in
tests/registry/test_hostile_uploads.py."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from registry import archives, inspection, services
from registry.models import ModelVersion
from tests import factories
from tests.conftest import files_under, upload

UNUSED = "assets/unused-padding.bin"


@pytest.fixture(scope="module")
def vocab_zip(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A SavedModel whose table is filled from assets/vocab.txt at load, zipped (in a top-level
    folder, as `zip -r export.zip export/` makes it) with 3 MiB of random bytes in assets/ that no
    graph names."""
    base = tmp_path_factory.mktemp("vocab")
    model_dir = factories.vocabulary_saved_model(base / "export", ["cat", "dog", "emu"])
    (model_dir / UNUSED).write_bytes(np.random.default_rng(0).bytes(3 * 1024 * 1024))
    return factories.zip_dir(model_dir, base / "vocab.zip", prefix="export/")


def test_only_the_assets_the_graph_names_are_written_for_inspection(vocab_zip, tmp_path):
    found = inspection.inspect_here(vocab_zip, vocab_zip.name, workdir=tmp_path,
                                    limits=archives.Limits.from_settings())

    assert found.format == "saved_model"
    assert found.signature["inputs"] == [{"name": "words", "dtype": "string", "shape": [None]}]
    written = files_under(tmp_path / "unpacked")
    assert "export/assets/vocab.txt" in written and "export/saved_model.pb" in written
    assert "export/variables/variables.index" in written
    assert f"export/{UNUSED}" not in written


@pytest.mark.django_db
def test_a_model_reading_its_assets_at_load_registers_and_keeps_every_byte(api, registered, vocab_zip, tmp_path):
    response = upload(api, "digits", vocab_zip)

    assert response.status_code == 201, response.content
    assert response.json()["sha256"] == hashlib.sha256(vocab_zip.read_bytes()).hexdigest()
    version = ModelVersion.objects.get(model=registered, number=1)
    root = services.version_unpack(version, tmp_path / "served")  # what promotion serves: the whole tree
    assert (root / UNUSED).read_bytes() == zipfile.ZipFile(vocab_zip).read(f"export/{UNUSED}")
    assert (root / "assets" / "vocab.txt").read_text() == "cat\ndog\nemu\n"


def test_a_saved_model_pb_beside_another_folder_is_not_a_saved_model(tmp_path):
    # Found from the member names, the rule is the one applied to an unpacked directory.
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("export/saved_model.pb", "in a folder, but not the only one")
        zf.writestr("other/assets/a.txt", "a")

    with pytest.raises(inspection.InvalidModel, match="no saved_model.pb at its root"):
        inspection.inspect_here(path, path.name, workdir=tmp_path, limits=archives.Limits.from_settings())
    assert files_under(tmp_path / "unpacked") == ["export/saved_model.pb", "other/assets/a.txt"]
