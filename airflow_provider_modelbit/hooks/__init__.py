"""Hooks: the Modelbit protocol."""
