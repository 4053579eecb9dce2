"""The hostname Airflow records for a process of the production-shaped run (``[core] hostname_callable``).

All the services run on one machine, so the machine's name cannot tell the two Celery workers or the
two triggerers apart; each is started with ``MODELBIT_SERVICE_HOSTNAME`` naming it instead, and the
task instances and triggerer jobs carry that name.
"""

from __future__ import annotations

import os
import socket


def service_hostname() -> str:
    """``$MODELBIT_SERVICE_HOSTNAME``, or the machine's name for a process started without it."""
    return os.environ.get("MODELBIT_SERVICE_HOSTNAME") or socket.getfqdn()
