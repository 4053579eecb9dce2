"""
Deployments served by the local Modelbit server, and how to register your own.

A deployment is a plain Python callable registered under a name, a branch (``main`` unless
given) and a version number; named aliases such as ``official`` point at a version of a branch.

Registration format
-------------------

Write a Python file that defines ``register(registry)`` and start the server with
``modelbit-emulator --deployments my_models.py`` (or ``run_emulator(deployments_file=...)``)::

    # my_models.py
    from airflow_provider_modelbit.emulator.deployments import DeploymentRegistry


    def score(x):
        return x * 3


    def predict(frame):  # DataFrame mode: receives a pandas DataFrame, returns one value per row
        return frame["age"] / 100


    def register(registry: DeploymentRegistry) -> None:
        registry.add("tripler", score)  # main, version 1
        registry.add("tripler", score, version=2, aliases=("official",))
        registry.add("tripler", score, branch="feature/x")  # /v1/tripler/feature~x/latest
        registry.add("churn", predict, dataframe_columns=("age", "plan"))

``registry.add(name, function, *, version=None, branch="main", aliases=(), dataframe_columns=None)``:

- ``name``: letters, digits and ``_`` only, as on Modelbit;
- ``version``: a positive integer; omitted, the next number on that branch;
- ``aliases``: alias names pointing at this version (a later registration moves an alias);
- ``dataframe_columns``: makes the deployment a DataFrame-mode deployment with these columns.

Your deployments are added next to the built-in examples, which are always available:
``doubler``, ``echo``, ``versioned``, ``raiser``, ``sleeper`` and ``churn_scorer``.
"""

from __future__ import annotations

import importlib.util
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

MAIN_BRANCH = "main"
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class DeploymentNotFound(LookupError):
    """No deployment, branch, version or alias matches the request path."""


class DeploymentsFileError(ValueError):
    """A ``--deployments`` file could not be loaded."""


@dataclass(frozen=True)
class DeploymentVersion:
    """
    One callable version of a deployment on one branch.

    :param deployment: the deployment's name.
    :param branch: the git branch, ``main`` by default.
    :param version: the version number on that branch.
    :param function: the callable run for each inference.
    :param dataframe_columns: the declared columns of a DataFrame-mode deployment, else None.
    """

    deployment: str
    branch: str
    version: int
    function: Callable[..., Any]
    dataframe_columns: tuple[str, ...] | None = None

    @property
    def dataframe_mode(self) -> bool:
        return self.dataframe_columns is not None


@dataclass
class Deployment:
    """
    All branches, versions and aliases registered under one name.

    :param name: the deployment's name.
    :param versions: branch -> version number -> version.
    :param aliases: branch -> alias -> version number.
    """

    name: str
    versions: dict[str, dict[int, DeploymentVersion]] = field(default_factory=lambda: {MAIN_BRANCH: {}})
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)


class DeploymentRegistry:
    """The deployments one emulator serves."""

    def __init__(self) -> None:
        self._deployments: dict[str, Deployment] = {}

    def add(
        self,
        name: str,
        function: Callable[..., Any],
        *,
        version: int | None = None,
        branch: str = MAIN_BRANCH,
        aliases: Iterable[str] = (),
        dataframe_columns: Iterable[str] | None = None,
    ) -> DeploymentVersion:
        """Register ``function`` as a version of deployment ``name``; see the module docstring."""
        if not DEPLOYMENT_NAME.match(name):
            raise ValueError(f"Deployment name {name!r} is invalid: use letters, digits and '_' only.")
        deployment = self._deployments.setdefault(name, Deployment(name))
        branch_versions = deployment.versions.setdefault(branch, {})
        number = version if version is not None else max(branch_versions, default=0) + 1
        if not isinstance(number, int) or number < 1:
            raise ValueError(f"Version of deployment {name!r} must be a positive integer, got {number!r}.")
        columns = tuple(dataframe_columns) if dataframe_columns is not None else None
        registered = DeploymentVersion(name, branch, number, function, columns)
        branch_versions[number] = registered
        for alias in aliases:
            deployment.aliases.setdefault(branch, {})[alias] = number
        return registered

    def resolve(self, name: str, branch: str, version: str) -> DeploymentVersion:
        """The version a request path names; raises :class:`DeploymentNotFound`."""
        deployment = self._deployments.get(name)
        if deployment is None:
            raise DeploymentNotFound(f"Deployment not found: {name!r} does not exist in this workspace.")
        versions = deployment.versions.get(branch)
        if versions is None:
            raise DeploymentNotFound(f"Deployment not found: {name!r} has no branch {branch!r}.")
        number = self._version_number(deployment, branch, versions, version)
        if number not in versions:
            raise DeploymentNotFound(
                f"Deployment not found: {name!r} on branch {branch!r} has no version {version!r}."
            )
        return versions[number]

    @staticmethod
    def _version_number(
        deployment: Deployment, branch: str, versions: dict[int, DeploymentVersion], version: str
    ) -> int | None:
        if version == "latest":
            return max(versions, default=None)
        if version.isdigit():
            return int(version)
        return deployment.aliases.get(branch, {}).get(version)

    def describe(self) -> list[dict[str, Any]]:
        """Names, branches, versions and aliases, for the inspection routes."""
        return [
            {
                "name": deployment.name,
                "branches": {branch: sorted(versions) for branch, versions in deployment.versions.items()},
                "aliases": deployment.aliases,
                "dataframe_columns": next(
                    (
                        list(v.dataframe_columns or ())
                        for vs in deployment.versions.values()
                        for v in vs.values()
                    ),
                    None,
                ),
            }
            for deployment in self._deployments.values()
        ]


# Built-in example deployments --------------------------------------------------------------


def doubler(x: Any) -> Any:
    return 2 * x


def echo(*args: Any) -> Any:
    return args[0] if len(args) == 1 else list(args)


def raiser(x: Any) -> Any:
    raise ValueError(f"boom: {x}")


def sleeper(x: float) -> float:
    time.sleep(x)
    return x


_PLAN_WEIGHTS = {"free": 0.6, "basic": 0.2, "pro": -0.4, "enterprise": -1.1}


def churn_scorer(frame: pd.DataFrame) -> pd.Series:
    """A deterministic churn probability in [0, 1] per customer row."""
    import pandas as pd  # imported on first use: it takes seconds and most deployments never need it

    tenure = pd.to_numeric(frame["tenure_months"], errors="coerce").fillna(0.0)
    spend = pd.to_numeric(frame["monthly_spend"], errors="coerce").fillna(0.0)
    plan = frame["plan"].map(_PLAN_WEIGHTS).astype(float).fillna(0.0)
    logit = 1.2 - 0.05 * tenure + 0.004 * spend + plan
    return 1.0 / (1.0 + logit.clip(-50, 50).map(lambda z: math.exp(-z)))


def _versioned(version: int, branch: str | None = None) -> Callable[[Any], dict[str, Any]]:
    def versioned(x: Any) -> dict[str, Any]:
        answer: dict[str, Any] = {"version": version, "input": x}
        return answer if branch is None else {"branch": branch, **answer}

    return versioned


def register_examples(registry: DeploymentRegistry) -> None:
    """Register the built-in example deployments."""
    registry.add("doubler", doubler)
    registry.add("echo", echo)
    for version in (1, 2, 3):
        registry.add(
            "versioned", _versioned(version), version=version, aliases=("official",) * (version == 2)
        )
    registry.add("versioned", _versioned(1, "dev"), version=1, branch="dev")
    registry.add("versioned", _versioned(1, "dev"), version=1, branch="feature/dev")
    registry.add("raiser", raiser)
    registry.add("sleeper", sleeper)
    registry.add("churn_scorer", churn_scorer, dataframe_columns=("tenure_months", "monthly_spend", "plan"))


def load_deployments_file(path: str | Path, registry: DeploymentRegistry) -> None:
    """Import ``path`` and call its ``register(registry)``; raises :class:`DeploymentsFileError`."""
    source = Path(path)
    if not source.is_file():
        raise DeploymentsFileError(f"Deployments file {source} does not exist.")
    spec = importlib.util.spec_from_file_location(f"modelbit_emulator_user_{source.stem}", source)
    if spec is None or spec.loader is None:
        raise DeploymentsFileError(f"Deployments file {source} is not an importable Python file.")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise DeploymentsFileError(f"Importing deployments file {source} failed: {error!r}") from error
    register = getattr(module, "register", None)
    if not callable(register):
        raise DeploymentsFileError(
            f"Deployments file {source} must define register(registry); see the emulator documentation."
        )
    register(registry)


def build_registry(deployments_file: str | Path | None = None) -> DeploymentRegistry:
    """The built-in examples plus, if given, the deployments of a user file."""
    registry = DeploymentRegistry()
    register_examples(registry)
    if deployments_file is not None:
        load_deployments_file(deployments_file, registry)
    return registry
