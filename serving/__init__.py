"""Modelyard's TF Serving-protocol model server (`python -m serving`). No Django here."""
