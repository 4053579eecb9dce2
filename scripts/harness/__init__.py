"""What the scripts and the tests share to run Airflow and the local Modelbit server on one machine.

- :mod:`harness.processes` — commands in process groups of their own, stopped together, on
  interrupt, and by a watchdog when the script that started them dies;
- :mod:`harness.layout` — the folders of one run (``AIRFLOW_HOME``, logs, data, callback store);
- :mod:`harness.airflow` — the ``airflow`` command, a run's environment, database and DAG list;
- :mod:`harness.outcomes` — what a DAG run did, read from the metadata database;
- :mod:`harness.report` — the report of an examples run;
- :mod:`harness.examples` — the examples run itself (``scripts/run_examples.py`` is its command).

``scripts/`` is on ``sys.path`` for the scripts (their own folder) and for the tests (pytest's
``pythonpath``), so ``import harness`` works in both.
"""
