"""Errors raised by the Modelbit provider.

Every error a user can cause is a :class:`ModelbitError`, so a DAG can catch one class, and
each kind has its own subclass so callers can tell a refused key from a failing model.
Messages name the deployment, version and HTTP status where known, and never the API key.

Errors that another try cannot fix — bad input, a refused key, a missing deployment or version, a
request Modelbit rejects as invalid — are permanent errors (:class:`ModelbitPermanentError`), also
Airflow's ``AirflowFailException``: the task fails at once instead of spending its ``retries``.
Every other error (rate limits, timeouts, transport and gateway failures, a model that raised, an
expired link, an incomplete answer, a failed callback job) keeps Airflow's retries.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException

from airflow_provider_modelbit.version_compat import AirflowFailException


class ModelbitError(AirflowException):
    """
    Base of every error raised by the Modelbit provider.

    :param message: what went wrong, for people.
    :param deployment: the deployment called, if any.
    :param version: the version, alias or ``latest`` called, if any.
    :param status: the HTTP status answered, if any.
    """

    #: Whether the failed request may have reached Modelbit (so the model may have run); ``None``
    #: where no request was involved. Callers that must not run a model twice read it.
    request_sent: bool | None = None
    #: Whether the server answered the failed request with a refusal (a client error, a rate limit,
    #: a gateway's 502/503): it did not take the request, so nothing was queued or run.
    refused: bool = False

    def __init__(
        self,
        message: str,
        *,
        deployment: str | None = None,
        version: str | int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.deployment = deployment
        self.version = version
        self.status = status

    def located(self, where: str) -> ModelbitError:
        """
        A copy of this error, of the same class, whose message ends by saying where it happened.

        For a caller that knows more than the code that raised: the batch operator adds the chunk
        and its input rows to a hook error about one request.
        """
        state = {name: value for name, value in self.__dict__.items() if name != "message"}
        return _rebuild_error(
            type(self), f"{self.message} [{where}]", self.deployment, self.version, self.status, state
        )

    def __reduce__(self):  # keep keyword attributes across pickling (multiprocessing, executors)
        return (
            _rebuild_error,
            (type(self), self.message, self.deployment, self.version, self.status, self.__dict__),
        )


def _rebuild_error(cls, message, deployment, version, status, state):
    error = cls.__new__(cls)
    ModelbitError.__init__(error, message, deployment=deployment, version=version, status=status)
    error.__dict__.update(state)
    return error


class ModelbitPermanentError(ModelbitError, AirflowFailException):
    """
    An error another try cannot fix: the task fails without using its ``retries``.

    The one home of that rule: a subclass of this class ends the task, any other ``ModelbitError``
    leaves the decision to the task's ``retries``.
    """


class ModelbitInputError(ModelbitPermanentError, ValueError):
    """A value given by the user (name, version, data, file, setting) is invalid; nothing was sent."""


class ModelbitConnectionError(ModelbitPermanentError):
    """The Airflow Connection is missing or misconfigured."""


class ModelbitAuthError(ModelbitPermanentError):
    """Modelbit refused the API key (missing, unknown or malformed)."""


class ModelbitNotFound(ModelbitPermanentError):
    """The workspace, deployment, branch, version or alias does not exist."""


class ModelbitBadRequest(ModelbitPermanentError):
    """Modelbit rejected the request as invalid (HTTP 400)."""


class ModelbitPayloadTooLarge(ModelbitBadRequest):
    """The request body exceeded the server's size limit (HTTP 413)."""


class ModelbitRateLimited(ModelbitError):
    """
    A rate or concurrency limit rejected the request (HTTP 429) and retries ran out.

    :param retry_after: seconds the server asked to wait, if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ModelbitDeploymentError(ModelbitError):
    """
    The deployment raised an exception.

    The message is the last line of the traceback; the whole text is kept in ``traceback``.
    """

    def __init__(self, message: str, *, traceback: str = "", **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.traceback = traceback


class ModelbitTimeout(ModelbitError):
    """The inference ran past ``timeout_seconds``, or the HTTP answer did not arrive in time."""


class ModelbitTransportError(ModelbitError):
    """The request got no usable answer: a connection failure, a gateway error, or a body that is not JSON."""


class ModelbitLinkExpired(ModelbitError):
    """A results link answered 403: it expired (links live one hour) or its signature is invalid."""


class ModelbitIncompleteBatch(ModelbitError):
    """A batch answer or download lacks rows, has unexpected IDs, or was cut short."""


class ModelbitCallbackError(ModelbitError):
    """An async-callback job failed: a delivery carried an error, or deliveries did not arrive in time."""


class ModelbitOutputError(ModelbitInputError):
    """
    An output location cannot take the results: the input itself, a directory, unwritable,
    unreachable, or its filesystem package is missing. Raised before any request is sent.
    """


class ModelbitOutputBusy(ModelbitError):
    """Another run is writing the same output: it holds the output's lease and is still working."""


def modelbit_error_class(name: object, default: type[ModelbitError]) -> type[ModelbitError]:
    """
    The provider's error class called ``name``, else ``default``.

    A trigger event carries an error by class name (events hold plain values); the task rebuilds
    it with this, so only the classes of this module can come back.
    """
    found = globals().get(name) if isinstance(name, str) else None
    return found if isinstance(found, type) and issubclass(found, ModelbitError) else default
