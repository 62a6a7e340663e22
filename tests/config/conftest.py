"""The digits model and its datasets, shared with the optimization tests."""
from tests.optimization.conftest import digits_files, digits_model  # noqa: F401
