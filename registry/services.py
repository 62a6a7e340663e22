"""Every write to the registry. API views, admin, pages, commands and tasks all call these."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max

from registry import archives, audit, blobrefs, datasets, inspection, jsonlimits
from registry.blobstore import artifact_store
from registry.errors import Conflict, NotFound, RegistryError
from registry.models import MAX_TAGS, Dataset, ModelAlias, ModelVersion, RegisteredModel, Tag
from registry.uploads import StagedFile

log = logging.getLogger(__name__)
NUMBER_RETRIES = 5


def _validated(obj: Any) -> None:
    try:
        obj.full_clean()
    except ValidationError as exc:
        raise RegistryError(_validation_message(exc), code="validation_error", details=exc.message_dict) from exc


def _validation_message(exc: ValidationError) -> str:
    parts = [f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()]
    return "; ".join(parts) or "Invalid data."


def _tags(names: Iterable[str]) -> list[Tag]:
    unique = sorted({n.strip().lower() for n in names if n and n.strip()})
    if len(unique) > MAX_TAGS:
        raise RegistryError(f"At most {MAX_TAGS} tags are allowed; got {len(unique)}.", code="too_many_tags")
    tags = []
    for name in unique:
        tag = Tag(name=name)
        try:
            tag.clean_fields()
        except ValidationError as exc:
            raise RegistryError(f"Invalid tag {name!r}: {' '.join(exc.messages)}", code="validation_error") from exc
        tags.append(Tag.objects.get_or_create(name=name)[0])
    return tags


# --- Registered models -----------------------------------------------------------------------

@transaction.atomic
def model_create(
    *, name: str, owner: AbstractBaseUser, description: str = "", task: str = RegisteredModel.Task.OTHER,
    tags: Iterable[str] = (),
) -> RegisteredModel:
    if RegisteredModel.objects.filter(name=name).exists():
        raise Conflict(f"A model named {name!r} already exists.", code="model_exists")
    model = RegisteredModel(name=name, owner=owner, description=description, task=task)
    _validated(model)
    model.save()
    model.tags.set(_tags(tags))
    audit.record(actor=owner, action="model.create", obj=model, model=model,
                 after={"name": name, "task": task, "description": description})
    return model


@transaction.atomic
def model_update(
    *, model: RegisteredModel, actor: AbstractBaseUser, description: str | None = None, task: str | None = None,
    tags: Iterable[str] | None = None,
) -> RegisteredModel:
    before = {"description": model.description, "task": model.task, "tags": [t.name for t in model.tags.all()]}
    if description is not None:
        model.description = description
    if task is not None:
        model.task = task
    _validated(model)
    model.save()
    if tags is not None:
        model.tags.set(_tags(tags))
    after = {"description": model.description, "task": model.task, "tags": [t.name for t in model.tags.all()]}
    audit.record(actor=actor, action="model.update", obj=model, model=model, before=before, after=after)
    return model


def get_model(name: str) -> RegisteredModel:
    try:
        return RegisteredModel.objects.get(name=name)
    except RegisteredModel.DoesNotExist:
        raise NotFound(f"No registered model is named {name!r}.", code="model_not_found") from None


def get_version(model: RegisteredModel, number: int | str) -> ModelVersion:
    try:
        return ModelVersion.objects.with_related().get(model=model, number=int(number))
    except (ModelVersion.DoesNotExist, ValueError):
        raise NotFound(f"Model {model.name!r} has no version {number}.", code="version_not_found") from None


# --- Versions --------------------------------------------------------------------------------

def _check_metadata(metadata: Any) -> None:
    """Metadata is a JSON object within the nesting and size limits (``registry.jsonlimits``)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise RegistryError("metadata must be a JSON object.", code="validation_error")
    jsonlimits.check(metadata, what="metadata")


def version_create(
    *, model: RegisteredModel, staged: StagedFile, actor: AbstractBaseUser, description: str = "",
    metadata: dict[str, Any] | None = None, tags: Iterable[str] = (), parent: ModelVersion | None = None,
    source: str = ModelVersion.Source.UPLOAD,
) -> ModelVersion:
    """Inspect the staged artifact, store its blob, and register it as the model's next version.

    Inspection (the slow part: unpacking, loading with TensorFlow) happens before any lock is
    taken. If anything fails, no row and no new blob is left behind.
    """
    _check_metadata(metadata)
    if parent is not None and parent.model_id != model.pk:
        raise RegistryError("The parent must be a version of the same model.", code="validation_error")
    found = inspection.inspect_artifact(staged.path, staged.filename)
    tag_names = list(tags)
    store = artifact_store()
    created_blob = store.put(staged.path, staged.sha256)
    try:
        return _insert_version(model=model, staged=staged, found=found, actor=actor, description=description,
                               metadata=metadata or {}, tag_names=tag_names, parent=parent, source=source)
    except BaseException:
        if created_blob:
            discard_blob_if_unreferenced(staged.sha256)
        raise


def discard_blob_if_unreferenced(sha256: str) -> None:
    """After a rolled-back write: remove a blob no committed row points at (see ``blobrefs``)."""
    if not blobrefs.referenced(sha256):
        artifact_store().discard(sha256)


def _insert_version(*, model: RegisteredModel, staged: StagedFile, found: inspection.Inspection,
                    actor: AbstractBaseUser, description: str, metadata: dict[str, Any], tag_names: list[str],
                    parent: ModelVersion | None, source: str) -> ModelVersion:
    # The model row lock (PostgreSQL) or the IMMEDIATE transaction (SQLite) serializes number
    # allocation; the unique constraint plus a retry covers any database that allows a race.
    for attempt in range(NUMBER_RETRIES):
        try:
            with transaction.atomic():
                RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
                number = (ModelVersion.objects.filter(model=model).aggregate(n=Max("number"))["n"] or 0) + 1
                version = ModelVersion(
                    model=model, number=number, format=found.format, artifact_sha256=staged.sha256,
                    artifact_size=staged.size, artifact_filename=staged.filename[:255], signature=found.signature,
                    framework=found.framework, parent=parent, source=source, description=description,
                    metadata=metadata, created_by=actor,
                )
                _validated(version)
                version.save()
                version.tags.set(_tags(tag_names))
                audit.record(actor=actor, action="version.create", obj=version, model=model, version=version,
                             after={"number": number, "sha256": staged.sha256, "format": found.format,
                                    "source": source, "parent": parent.number if parent else None})
                return version
        except IntegrityError:
            if attempt == NUMBER_RETRIES - 1:
                raise Conflict("Could not allocate a version number; please retry.", code="version_race") from None
            log.info("version number race on %s, retrying", model.name)
    raise AssertionError("unreachable")


@transaction.atomic
def version_update(
    *, version: ModelVersion, actor: AbstractBaseUser, description: str | None = None,
    metadata: dict[str, Any] | None = None, tags: Iterable[str] | None = None,
) -> ModelVersion:
    """Change the only mutable parts of a version: description, metadata and tags.

    Metadata is read (and audited) only when it changes: a version may hold metadata stored,
    before the limits, too deep to decode, and editing its description must still work (pass a
    version loaded with ``.defer("metadata")``)."""
    before: dict[str, Any] = {"description": version.description, "tags": [t.name for t in version.tags.all()]}
    fields = []
    if description is not None:
        version.description = description
        fields.append("description")
    if metadata is not None:
        _check_metadata(metadata)
        old, readable = jsonlimits.stored_json(version, "metadata")
        before["metadata"] = old if readable else f"(nested deeper than {jsonlimits.MAX_DEPTH} levels: not recorded)"
        version.metadata = metadata
        fields.append("metadata")
    if fields:
        version.save(update_fields=fields)
    if tags is not None:
        version.tags.set(_tags(tags))
    after = {"description": version.description, "tags": [t.name for t in version.tags.all()],
             **({"metadata": metadata} if metadata is not None else {})}
    audit.record(actor=actor, action="version.update", obj=version, model=version.model, version=version,
                 before=before, after=after)
    return version


def version_artifact_path(version: ModelVersion) -> Path:
    """The verified on-disk path of a version's artifact (raises if the bytes were damaged)."""
    return artifact_store().verify(version.artifact_sha256, version.artifact_size)


def version_unpack(version: ModelVersion, dest: Path) -> Path:
    """Verify the artifact and make it loadable under ``dest``: a SavedModel archive is unpacked
    (safely) and its root directory returned; a single-file model is linked as ``dest.<suffix>``."""
    blob = version_artifact_path(version)
    if version.format != ModelVersion.Format.SAVED_MODEL:
        suffix = Path(version.artifact_filename).suffix or (".tflite" if version.format == "tflite" else ".keras")
        target = dest.with_suffix(suffix)
        target.symlink_to(blob)
        return target
    _, container = inspection.detect_container(version.artifact_filename)
    dest.mkdir(parents=True)
    archives.extract(blob, dest, container)
    return inspection.find_saved_model_root(dest)


# --- Aliases ---------------------------------------------------------------------------------

@transaction.atomic
def alias_set(*, model: RegisteredModel, name: str, version: ModelVersion, actor: AbstractBaseUser) -> ModelAlias:
    if version.model_id != model.pk:
        raise RegistryError("An alias can only point at a version of its own model.", code="validation_error")
    if version.status != ModelVersion.Status.READY:
        raise Conflict(f"Version {version.number} is {version.status}; only ready versions can be aliased.")
    alias = ModelAlias.objects.select_for_update().filter(model=model, name=name).first()
    before = {"version": alias.version.number} if alias else None
    if alias is None:
        alias = ModelAlias(model=model, name=name, version=version, updated_by=actor)
    else:
        alias.version, alias.updated_by = version, actor
    _validated(alias)
    alias.save()
    audit.record(actor=actor, action="alias.set", obj=alias, model=model, version=version,
                 before=before, after={"version": version.number})
    return alias


@transaction.atomic
def alias_delete(*, model: RegisteredModel, name: str, actor: AbstractBaseUser) -> None:
    alias = ModelAlias.objects.select_for_update().filter(model=model, name=name).first()
    if alias is None:
        raise NotFound(f"Model {model.name!r} has no alias {name!r}.", code="alias_not_found")
    audit.record(actor=actor, action="alias.delete", obj=alias, model=model, version=alias.version,
                 before={"version": alias.version.number}, after=None)
    alias.delete()


# --- Datasets --------------------------------------------------------------------------------

def dataset_create(
    *, model: RegisteredModel, staged: StagedFile, role: str, actor: AbstractBaseUser,
    check_version: ModelVersion | None = None, name: str = "",
) -> Dataset:
    """Validate the .npz (no pickles, x fits the version's signature) and store it."""
    if role not in Dataset.Role.values:
        raise RegistryError(f"role must be one of {', '.join(Dataset.Role.values)}, got {role!r}.",
                            code="validation_error")
    if check_version is None:
        check_version = ModelVersion.objects.ready().filter(model=model).order_by("-number").first()
        if check_version is None:
            raise Conflict(f"Model {model.name!r} has no version yet to check the dataset against.",
                           code="no_version")
    described = datasets.describe_npz(staged.path)  # headers only: no array is built here
    datasets.check_shape_against_signature(described, check_version.signature)
    store = artifact_store()
    created_blob = store.put(staged.path, staged.sha256)
    try:
        with transaction.atomic():
            dataset = Dataset(model=model, name=(name or staged.filename)[:255], role=role, sha256=staged.sha256,
                              size_bytes=staged.size, arrays=described,
                              checked_against=check_version, created_by=actor)
            _validated(dataset)
            dataset.save()
            audit.record(actor=actor, action="dataset.create", obj=dataset, model=model, version=check_version,
                         after={"name": dataset.name, "role": role, "sha256": staged.sha256,
                                "arrays": dataset.arrays})
            return dataset
    except BaseException:
        if created_blob:
            discard_blob_if_unreferenced(staged.sha256)
        raise


def dataset_arrays(dataset: Dataset) -> dict[str, Any]:
    """Load a stored dataset's arrays after verifying its digest (workers only: this allocates them)."""
    path = artifact_store().verify(dataset.sha256, dataset.size_bytes)
    return datasets.read_npz(path)
