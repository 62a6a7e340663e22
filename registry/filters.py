from __future__ import annotations

import copy
from typing import Any

import django_filters
from django.db.models import QuerySet
from django.http import QueryDict
from django_filters.rest_framework import DjangoFilterBackend


class FilterBackend(DjangoFilterBackend):
    """django-filter's backend, except that a request naming none of the view's filters gets the
    queryset untouched: building and validating a FilterSet (a deep copy of every filter, a form)
    was a tenth of an unfiltered page of versions, and applies nothing when no filter is given."""

    def filter_queryset(self, request: Any, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None and not any(name in request.query_params
                                                   for name in filterset_class.base_filters):
            return queryset
        return super().filter_queryset(request, queryset, view)

from registry.models import AuditEvent, Dataset, ModelVersion, RegisteredModel


class FilterSet(django_filters.FilterSet):
    """django-filter's FilterSet holding only the filters the request names. Its own ``__init__``
    deep-copies every declared filter (choices and all) and its form builds a field for each, on
    every request: a third of a filtered page of versions went there. A filter the request does not
    name applies nothing and has nothing to validate, so it is left out; the class (``base_filters``,
    what the OpenAPI schema documents) is unchanged. The body is django-filter 26.2's but that line."""

    def __init__(self, data: Any = None, queryset: QuerySet[Any] | None = None, *, request: Any = None,
                 prefix: str | None = None) -> None:
        if queryset is None:
            queryset = self._meta.model._default_manager.all()
        self.is_bound = data is not None
        self.data = data or QueryDict()
        self.queryset = queryset
        self.request = request
        self.form_prefix = prefix
        self.filters = {name: copy.deepcopy(filter_) for name, filter_ in self.base_filters.items()
                        if data is None or name in data}
        for filter_ in self.filters.values():
            filter_.model = queryset.model
            filter_.parent = self


class ModelFilter(FilterSet):
    tag = django_filters.CharFilter(field_name="tags__name", help_text="Only models with this tag.")
    task = django_filters.ChoiceFilter(choices=RegisteredModel.Task.choices)

    class Meta:
        model = RegisteredModel
        fields = ["tag", "task"]


class VersionFilter(FilterSet):
    tag = django_filters.CharFilter(field_name="tags__name", help_text="Only versions with this tag.")
    alias = django_filters.CharFilter(field_name="aliases__name", help_text="The version an alias points at.")
    parent = django_filters.NumberFilter(field_name="parent__number", help_text="Variants of this version number.")
    status = django_filters.ChoiceFilter(choices=ModelVersion.Status.choices)
    format = django_filters.ChoiceFilter(choices=ModelVersion.Format.choices)
    source = django_filters.ChoiceFilter(choices=ModelVersion.Source.choices)

    class Meta:
        model = ModelVersion
        fields = ["tag", "alias", "parent", "status", "format", "source"]


class DatasetFilter(FilterSet):
    role = django_filters.ChoiceFilter(choices=Dataset.Role.choices)

    class Meta:
        model = Dataset
        fields = ["role"]


class AuditEventFilter(FilterSet):
    model = django_filters.CharFilter(field_name="model__name")
    version = django_filters.NumberFilter(field_name="version__number")
    action = django_filters.CharFilter(field_name="action")
    object_type = django_filters.CharFilter(field_name="object_type")
    object_id = django_filters.CharFilter(field_name="object_id")
    release = django_filters.NumberFilter(method="filter_release", help_text="Events of one release.")

    class Meta:
        model = AuditEvent
        fields = ["model", "version", "action", "object_type", "object_id", "release"]

    def filter_release(self, queryset, name, value):  # type: ignore[no-untyped-def]
        return queryset.filter(object_type="releases.release", object_id=str(int(value)))
