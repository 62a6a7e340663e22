"""Gunicorn settings shared by every way Modelyard's web process starts (``bin/run``, the fuzz test,
``deploy/docker-compose.yml``): ``gunicorn -c config/gunicorn.py config.wsgi:application``.

Gunicorn refuses some requests itself, before Django sees them, with its own small HTML page: a
request line (method, path and query) over ``limit_request_line`` bytes gets 414, a header over
``limit_request_field_size`` or more than ``limit_request_fields`` headers gets 431, and a request
that is not valid HTTP gets 400. The API documents 414 and 431 as such (``registry/openapi.py``).
The request line limit is set to gunicorn's maximum so that long but honest filter queries reach the
app, which answers every refusal of its own in the JSON error shape.
"""
limit_request_line = 8190  # gunicorn's maximum; its default, 4094, refused generated queries of ~4.7 KB
limit_request_fields = 100  # gunicorn's default, stated so that the schema's 431 has a named source
limit_request_field_size = 8190  # gunicorn's default, likewise
