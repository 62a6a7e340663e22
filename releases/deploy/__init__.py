"""Endpoint drivers: how a SavedModel version gets onto one kind of serving endpoint. Django-free.

``releases.promotion`` (the workflow) picks endpoints, records steps and moves states; for each
endpoint it builds an ``EndpointSpec`` (after the operator's policy checks in
``releases.endpoints``), asks ``driver_for(spec)`` for the driver of its kind and calls one of the
four methods of ``EndpointDriver``. A new kind of endpoint is one new module here named
``<kind>_driver.py`` holding a ``@register``-ed subclass of ``EndpointDriver``; see the README.
"""
from releases.deploy.base import (  # noqa: F401 - the package's public names
    DRIVERS, EndpointDriver, EndpointSpec, Health, NeedsRestage, Outcome, driver_class, driver_for, register)
