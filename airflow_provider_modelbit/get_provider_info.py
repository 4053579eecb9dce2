"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

The connection form is declared here (``conn-fields`` and ``ui-field-behaviour``) so the
Airflow 3 UI shows it without importing the hook.
"""

from __future__ import annotations

from typing import Any

CONNECTION_FIELDS: dict[str, dict[str, Any]] = {
    "workspace": {
        "label": "Workspace",
        "description": (
            "Workspace name; with Region (and Outpost) it builds the Workspace URL when that is empty."
        ),
        "schema": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9-]*$"},
    },
    "region": {
        "label": "Region",
        "description": "Region part of the workspace host, e.g. us-east-2.aws or app.",
        "schema": {"type": ["string", "null"]},
    },
    "outpost": {
        "label": "Outpost",
        "description": "Outpost part of the workspace host, for workspaces that use one.",
        "schema": {"type": ["string", "null"]},
    },
    "branch": {
        "label": "Default branch",
        "description": "Branch used when a task names none.",
        "schema": {"type": ["string", "null"], "default": "main"},
    },
    "timeout_seconds": {
        "label": "Default timeout (seconds)",
        "description": (
            "Inference time limit sent with each request when a task sets none (1-300 sync, 1-900 async)."
        ),
        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 900},
    },
    "callback_base_url": {
        "label": "Callback base URL",
        "description": (
            "Public HTTPS URL at which Modelbit reaches the callback receiver, "
            "e.g. https://airflow.example.com/modelbit."
        ),
        "schema": {"type": ["string", "null"], "format": "url"},
    },
    "callback_secret": {
        "label": "Callback signing secret",
        "description": "Secret used to sign and verify webhook URLs (HMAC-SHA256). At least 16 characters.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "schema", "port"],
    "relabeling": {"host": "Workspace URL", "password": "API Key"},
    "placeholders": {
        "host": "https://acme.us-east-2.aws.modelbit.com",
        "password": "mi1a2b3c:Ab3dEf...",
    },
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow validates and registers."""
    return {
        "package-name": "airflow-provider-modelbit",
        "name": "Modelbit",
        "description": (
            "Call models deployed on Modelbit from Airflow: single, batch and async-callback inference."
        ),
        "integrations": [
            {
                "integration-name": "Modelbit",
                "external-doc-url": "https://doc.modelbit.com/",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Modelbit",
                "python-modules": ["airflow_provider_modelbit.hooks.modelbit"],
            }
        ],
        "operators": [
            {
                "integration-name": "Modelbit",
                "python-modules": [
                    "airflow_provider_modelbit.operators.inference",
                    "airflow_provider_modelbit.operators.batch",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "Modelbit",
                "python-modules": ["airflow_provider_modelbit.triggers.callback"],
            }
        ],
        "task-decorators": [
            {
                "name": "modelbit",
                "class-name": "airflow_provider_modelbit.decorators.modelbit.modelbit_task",
            }
        ],
        "connection-types": [
            {
                "connection-type": "modelbit",
                "hook-class-name": "airflow_provider_modelbit.hooks.modelbit.ModelbitHook",
                "hook-name": "Modelbit",
                "conn-fields": CONNECTION_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
        "config": {
            "modelbit": {
                "description": "Settings of the Modelbit provider.",
                "options": {
                    "callback_store": {
                        "description": (
                            "Where webhook deliveries are stored: a local folder or any ObjectStoragePath "
                            "URL (s3://..., gs://...) shared by the callback receiver, the triggerer and "
                            "the workers. Empty: $AIRFLOW_HOME/modelbit/callbacks."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@my-bucket/modelbit-callbacks",
                        "default": "",
                    },
                    "callback_conn_id": {
                        "description": (
                            "Connection whose callback secret the stand-alone receiver uses by default."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "modelbit_default",
                        "default": "modelbit_default",
                    },
                    "callback_retention_seconds": {
                        "description": (
                            "Seconds a callback job, its deliveries or a retired job's tombstone stay "
                            "in the callback store after their last write. The receiver expires older "
                            "ones (at most once an hour) and so does modelbit-callback-cleanup. Keep it "
                            "longer than a task's whole life, retries included."
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "86400",
                        "default": "604800",
                    },
                },
            }
        },
    }
