"""
OpenLineage metadata of a finished scoring task: what it read, what it wrote, and how it ran.

The OpenLineage provider calls each operator's ``get_openlineage_facets_on_complete``, which
hands over to :func:`inference_lineage` or :func:`batch_lineage` here. The inputs are the files
(or partitions) of the input table, or the upstream tasks whose XCom was scored; the output is
the final Parquet path, never the temporary file it was written through; the ``modelbit`` run
facet says which workspace, deployment, version and branch scored how many rows, in how many
chunks, with how many retries.

``apache-airflow-providers-openlineage`` is optional: it is imported only when it asks for lineage.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_modelbit.defaults import DEFAULT_BATCH_SIZE
from airflow_provider_modelbit.hooks.metrics import reason_tag

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
    from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator

#: Key of the run facet, and where its schema is documented.
RUN_FACET_KEY = "modelbit"
RUN_FACET_SCHEMA = "https://github.com/modelbit/airflow-provider-modelbit/blob/main/docs/observability.md#the-modelbit-run-facet"
#: Namespace of the datasets standing for an upstream task's XCom value.
XCOM_NAMESPACE = "airflow-xcom"


@dataclass(frozen=True)
class ScoringRun:
    """
    What a finished task tells lineage, free of any OpenLineage type.

    :param workspace: the Modelbit workspace host (``acme.us-east-1.modelbit.com``).
    :param deployment: deployment name.
    :param version: version asked for (``latest``, a number or an alias).
    :param branch: git branch the deployment was called on.
    :param rows: input rows scored (a single input is one).
    :param chunks: requests (or checkpointed chunks) the rows were sent in.
    :param retries: re-sent requests of this try, by reason (as in :mod:`.hooks.retries`).
    :param inputs: the input files, as ``ObjectStoragePath`` URLs.
    :param upstream: ``(dag_id, task_id)`` of each task whose XCom value was the input.
    :param output: the Parquet file written, or ``None`` when the result went to XCom.
    """

    workspace: str
    deployment: str
    version: str
    branch: str
    rows: int | None
    chunks: int
    retries: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    upstream: list[tuple[str, str]] = field(default_factory=list)
    output: str | None = None

    def facet_fields(self) -> dict[str, Any]:
        """The run facet's fields, as JSON values."""
        return {
            "workspace": self.workspace,
            "deployment": self.deployment,
            "version": self.version,
            "branch": self.branch,
            "rows": self.rows,
            "chunks": self.chunks,
            "retries": sum(self.retries.values()),
            "retriesByReason": {reason_tag(reason): count for reason, count in self.retries.items()},
        }


def inference_lineage(operator: ModelbitInferenceOperator) -> OperatorLineage:
    """Lineage of a successful :class:`ModelbitInferenceOperator` task."""
    return operator_lineage(inference_run(operator))


def batch_lineage(operator: ModelbitBatchInferenceOperator) -> OperatorLineage:
    """Lineage of a successful :class:`ModelbitBatchInferenceOperator` task."""
    return operator_lineage(batch_run(operator))


def inference_run(operator: ModelbitInferenceOperator) -> ScoringRun:
    """Describe a finished inference task: its upstream XCom inputs and its Parquet output, if any."""
    rows = operator._input_count
    return ScoringRun(
        **_call_fields(operator),
        rows=rows,
        chunks=1 if operator._is_single else math.ceil(rows / DEFAULT_BATCH_SIZE),
        upstream=[(operator.dag_id, task_id) for task_id in operator.input_tasks],
        output=str(operator._destination) if operator.output_path is not None else None,
    )


def batch_run(operator: ModelbitBatchInferenceOperator) -> ScoringRun:
    """Describe a finished batch task: its input files and its Parquet output."""
    written = operator.written or {}
    return ScoringRun(
        **_call_fields(operator),
        rows=written.get("rows", operator.source.num_rows),
        chunks=written.get("chunks", 0),
        inputs=[str(path) for path in operator.source.files],
        output=str(operator.output_location),
    )


def xcom_input_tasks(value: Any) -> list[str]:
    """
    The IDs of the tasks whose XCom ``value`` is built from, in order, each once.

    Read from the operator's arguments before rendering replaces the ``XComArg`` with its value.
    """
    from airflow.sdk.definitions.xcom_arg import XComArg

    task_ids = (operator.task_id for operator, _key in XComArg.iter_xcom_references(value))
    return list(dict.fromkeys(task_ids))


def operator_lineage(run: ScoringRun) -> OperatorLineage:
    """Turn a :class:`ScoringRun` into the OpenLineage provider's ``OperatorLineage``."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    inputs = [path_dataset(uri) for uri in run.inputs]
    inputs += [
        Dataset(namespace=XCOM_NAMESPACE, name=f"{dag_id}.{task_id}") for dag_id, task_id in run.upstream
    ]
    outputs = [path_dataset(run.output)] if run.output is not None else []
    return OperatorLineage(
        inputs=inputs,
        outputs=outputs,
        run_facets={RUN_FACET_KEY: _run_facet(run)},
    )


def path_dataset(uri: str) -> Any:
    """
    The OpenLineage dataset of a file, named as the OpenLineage naming spec says.

    Local files are namespace ``file`` with the absolute path as name; object stores are
    ``scheme://bucket`` with the key as name.
    """
    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "local"):
        return Dataset(namespace="file", name=parts.path or uri)
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/"))


def _call_fields(operator: Any) -> dict[str, Any]:
    settings = operator.hook.settings
    branch = operator.branch if operator.branch is not None else settings.branch
    return {
        "workspace": urlsplit(str(settings.base_url)).netloc or str(settings.base_url),
        "deployment": operator.deployment,
        "version": str(operator.version),
        "branch": branch,
        "retries": operator.hook.retry_stats,
    }


def _run_facet(run: ScoringRun) -> Any:
    return _run_facet_class()(**run.facet_fields())


@functools.cache
def _run_facet_class() -> type:
    # Built on first use: openlineage-python is there only when the OpenLineage provider is.
    import attrs
    from openlineage.client.facet_v2 import RunFacet

    @attrs.define
    class ModelbitRunFacet(RunFacet):
        """The Modelbit call behind a run: see ``docs/observability.md``."""

        workspace: str
        deployment: str
        version: str
        branch: str
        rows: int | None
        chunks: int
        retries: int
        retriesByReason: dict[str, int]  # OpenLineage facets name fields in camelCase

        @staticmethod
        def _get_schema() -> str:
            return RUN_FACET_SCHEMA

    return ModelbitRunFacet


__all__ = [
    "RUN_FACET_KEY",
    "XCOM_NAMESPACE",
    "ScoringRun",
    "batch_lineage",
    "batch_run",
    "inference_lineage",
    "inference_run",
    "operator_lineage",
    "path_dataset",
    "xcom_input_tasks",
]
