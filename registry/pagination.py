from __future__ import annotations

from typing import Any

from rest_framework.pagination import PageNumberPagination

from registry.errors import RegistryError


class Pagination(PageNumberPagination):
    """``?page=N`` and ``?page_size=M`` (1 to 500), default MODELYARD_PAGE_SIZE.

    DRF silently falls back to the default for a ``page_size`` it cannot use (``null``, ``0``,
    ``abc``, ``-1``) and clamps one above the maximum; a client then pages with a size it did not
    ask for. Here each of those is a 400 naming the allowed range.
    """

    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Any) -> int | None:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw, 10)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise RegistryError(f"page_size must be an integer from 1 to {self.max_page_size}, got {raw[:50]!r}.",
                                code="invalid_page_size")
        return size

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        params = super().get_schema_operation_parameters(view)
        for param in params:
            param["schema"] = {**param["schema"], "minimum": 1}
            if param["name"] == self.page_size_query_param:
                param["schema"]["maximum"] = self.max_page_size
        return params
