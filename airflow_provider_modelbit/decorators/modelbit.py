"""
``@task.modelbit``: score what a TaskFlow function returns with a Modelbit deployment.

The decorated function builds the input — a single value, batch rows ``[[id, *args], ...]`` or a
pandas DataFrame — and the task sends it exactly as :class:`ModelbitInferenceOperator` sends its
``data``, with the same options, and returns what the operator returns (the result, the
``[[id, result], ...]`` rows, or ``{"path", "rows", "bytes"}`` with ``output_path``)::

    @task.modelbit(deployment="churn_scorer", output_path="s3://bucket/scores/{{ ds }}.parquet")
    def churn_features(customers):
        return customers[["tenure", "plan"]]

Like ``@task``, it works with ``.partial()`` and ``.expand()``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator
from airflow_provider_modelbit.operators.lineage import xcom_input_tasks
from airflow_provider_modelbit.version_compat import determine_kwargs

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator


class _ModelbitDecoratedOperator(DecoratedOperator, ModelbitInferenceOperator):
    """
    Call the decorated function for the input, then score it as :class:`ModelbitInferenceOperator`.

    :param python_callable: the decorated function; it returns the input to score.
    :param op_args: positional arguments of the function. (templated)
    :param op_kwargs: keyword arguments of the function. (templated)
    :param kwargs: the options of :class:`ModelbitInferenceOperator` (``deployment``, ``version``,
        ``branch``, ``output_path``, ``deferrable``, ...), all but ``data``.
    """

    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        *(name for name in ModelbitInferenceOperator.template_fields if name != "data"),
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {**DecoratedOperator.template_fields_renderers}
    custom_operator_name: str = "@task.modelbit"

    def __init__(
        self,
        *,
        python_callable: Callable,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "data" in kwargs:
            raise TypeError("@task.modelbit takes its input from the function's return value, not data=.")
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, data=None, **kwargs
        )
        self.input_tasks = xcom_input_tasks((op_args, op_kwargs))  # the function's XCom inputs, for lineage

    def execute(self, context: Context) -> Any:
        self._take_input(context)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        # A resumed task is a new operator instance: the input is rebuilt by calling the function
        # again, as the operator re-renders its templated data. The function must be deterministic.
        self._take_input(context)
        return super().execute_complete(context, event)

    def _take_input(self, context: Context) -> None:
        context_merge(context, self.op_kwargs)
        self.data = self.python_callable(
            *self.op_args, **determine_kwargs(self.python_callable, self.op_args, context)
        )


def modelbit_task(python_callable: Callable | None = None, **kwargs: Any) -> TaskDecorator:
    """
    Wrap a function returning the input into a task that scores it on Modelbit (``@task.modelbit``).

    :param python_callable: the function to decorate.
    :param kwargs: the options of :class:`ModelbitInferenceOperator` and of every operator.
    """
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_ModelbitDecoratedOperator, **kwargs
    )


__all__ = ["modelbit_task"]
