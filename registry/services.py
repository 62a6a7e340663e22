"""Every write to the registry. API views, admin, pages, commands and tasks all call these."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from registry import archives, audit, blobrefs, datasets, inspection, jsonlimits, sql
from registry.blobstore import artifact_store
from registry.errors import Conflict, NotFound, RegistryError
from registry.models import (
    MAX_TAGS, Dataset, ModelAlias, ModelVersion, RegisteredModel, Tag, newest_version_number,
)
from registry.uploads import StagedFile

log = logging.getLogger(__name__)
NUMBER_RETRIES = 5


def _validated(obj: Any, *, database_checks: bool = True) -> None:
    """``full_clean()``; with ``database_checks=False`` only what needs no query (field validators
    and ``clean()``): for a row whose foreign keys point at objects the caller holds, and whose
    uniqueness the database's constraints enforce anyway (the caller maps the IntegrityError)."""
    try:
        if database_checks:
            obj.full_clean()
        else:
            obj.clean_fields(exclude=[f.name for f in obj._meta.concrete_fields if f.is_relation])
            obj.clean()
    except ValidationError as exc:
        raise RegistryError(_validation_message(exc), code="validation_error", details=exc.message_dict) from exc


def _validation_message(exc: ValidationError) -> str:
    parts = [f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()]
    return "; ".join(parts) or "Invalid data."


def _tags(names: Iterable[str]) -> list[Tag]:
    """The Tag rows for these names (lowered, deduplicated, sorted), creating the missing ones:
    one query when they all exist, none for no tags."""
    unique = sorted({n.strip().lower() for n in names if n and n.strip()})
    if len(unique) > MAX_TAGS:
        raise RegistryError(f"At most {MAX_TAGS} tags are allowed; got {len(unique)}.", code="too_many_tags")
    if not unique:
        return []
    for name in unique:
        try:
            Tag(name=name).clean_fields()
        except ValidationError as exc:
            raise RegistryError(f"Invalid tag {name!r}: {' '.join(exc.messages)}", code="validation_error") from exc
    found = {t.name: t for t in Tag.objects.filter(name__in=unique)}
    if missing := [n for n in unique if n not in found]:
        Tag.objects.bulk_create([Tag(name=n) for n in missing], ignore_conflicts=True)  # a racing twin is fine
        found.update((t.name, t) for t in Tag.objects.filter(name__in=missing))
    return [found[n] for n in unique]


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
    """The model named ``name`` or a 404: the first statement of most API calls, so in SQL."""
    found = sql.instances_where(RegisteredModel, "name", name)
    if not found:
        raise NotFound(f"No registered model is named {name!r}.", code="model_not_found")
    return found[0]


def get_version(model: RegisteredModel, number: int | str) -> ModelVersion:
    """Version ``number`` of ``model`` or a 404, in one query; ``version.model`` is the caller's object."""
    try:
        version = ModelVersion.objects.get(model=model, number=int(number))
    except (ModelVersion.DoesNotExist, ValueError):
        raise NotFound(f"Model {model.name!r} has no version {number}.", code="version_not_found") from None
    version.model = model
    return version


def get_version_of(model_name: str, number: int | str) -> ModelVersion:
    """Version ``number`` of the model named ``model_name`` with its model, parent and creator, in
    one query; the 404 of ``get_model`` or ``get_version`` when either is missing."""
    try:
        return (ModelVersion.objects.select_related("model", "parent", "created_by")
                .get(model__name=model_name, number=int(number)))
    except (ModelVersion.DoesNotExist, ValueError):
        return get_version(get_model(model_name), number)  # raises the 404 that applies


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
    """Allocate the next number and insert the version, its tags and its audit row in one
    transaction. The returned version holds everything its output shows (model, parent, creator
    and tags are the objects used here): nothing is read back."""
    for attempt in range(NUMBER_RETRIES):
        try:
            with transaction.atomic():
                number = _next_number(model)
                version = ModelVersion(
                    model=model, number=number, format=found.format, artifact_sha256=staged.sha256,
                    artifact_size=staged.size, artifact_filename=staged.filename[:255], signature=found.signature,
                    framework=found.framework, parent=parent, source=source, description=description,
                    metadata=metadata, created_by=actor,
                )
                # The rows it points at are the objects in hand; (model, number) is unique in the database.
                _validated(version, database_checks=False)
                version.save(force_insert=True)
                tags = _tags(tag_names)
                ModelVersion.tags.through.objects.bulk_create(
                    [ModelVersion.tags.through(modelversion_id=version.pk, tag_id=t.pk) for t in tags])
                audit.record(actor=actor, action="version.create", obj=version, model=model, version=version,
                             after={"number": number, "sha256": staged.sha256, "format": found.format,
                                    "source": source, "parent": parent.number if parent else None})
            model.latest_version = number
            # What its output shows (registry.serializers.VersionOutput), known without a query:
            # nothing can point an alias or a harness run at it before this returns.
            version.tag_names, version.alias_names, version.metrics_rows = [t.name for t in tags], [], []
            return version
        except IntegrityError:
            # Only a counter behind the rows gets here (versions inserted without this service):
            # set it from the rows and try again.
            if attempt == NUMBER_RETRIES - 1:
                raise Conflict("Could not allocate a version number; please retry.", code="version_race") from None
            log.warning("version counter of %s was behind its versions; resynchronizing", model.name)
            RegisteredModel.objects.filter(pk=model.pk).update(latest_version=newest_version_number())
    raise AssertionError("unreachable")


def _next_number(model: RegisteredModel) -> int:
    """Take the next version number of ``model`` by incrementing its ``latest_version``. The
    UPDATE locks the model's row (PostgreSQL; SQLite's IMMEDIATE transaction locks the database),
    so concurrent registrations of one model get consecutive numbers without retrying. One
    statement (``RETURNING``, SQLite 3.35+ and PostgreSQL; the ORM's ``update`` cannot return)."""
    latest = sql.name(RegisteredModel, "latest_version")
    [(number,)] = sql.fetch(f"UPDATE {sql.table(RegisteredModel)} SET {latest} = COALESCE({latest}, 0) + 1 "
                            f"WHERE {sql.name(RegisteredModel, 'id')} = %s RETURNING {latest}", [model.pk])
    return number


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
    """Point alias ``name`` of ``model`` at ``version`` (creating it), audited; returns the alias
    built from the objects given (nothing is read back)."""
    if version.model_id != model.pk:
        raise RegistryError("An alias can only point at a version of its own model.", code="validation_error")
    if version.status != ModelVersion.Status.READY:
        raise Conflict(f"Version {version.number} is {version.status}; only ready versions can be aliased.")
    alias = ModelAlias(model=model, name=name, version=version, updated_by=actor)
    _validated(alias, database_checks=False)  # the name; (model, name) is unique in the database
    current = (ModelAlias.objects.select_for_update(of=("self",)).filter(model=model, name=name).order_by()
               .values_list("pk", "version__number").first())
    if current is None:
        try:
            alias.save(force_insert=True)
        except IntegrityError:  # created by a concurrent request since the SELECT (PostgreSQL)
            raise Conflict(f"Alias {name!r} of {model.name!r} was created meanwhile by another request; "
                           "retry to move it.", code="alias_race") from None
    else:
        alias.pk = current[0]
        alias.save(force_update=True)
    audit.record(actor=actor, action="alias.set", obj=alias, model=model, version=version,
                 before={"version": current[1]} if current else None, after={"version": version.number})
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
