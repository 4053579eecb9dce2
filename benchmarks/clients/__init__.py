"""The client-side workloads, each run in its own process so its CPU and memory are its own.

Every module here is started as ``python -m benchmarks.clients.<name> ...`` by the runner and prints
one report line (see :mod:`benchmarks.clients.report`). Modules used by the official client's
environment (``.venv-bench``) import only the standard library, pandas and pyarrow.
"""
