"""A local Modelbit-compatible server."""
