"""Inference URLs of Modelbit deployments, every part validated before any request."""

from __future__ import annotations

import re

from airflow_provider_modelbit.defaults import LATEST
from airflow_provider_modelbit.exceptions import ModelbitInputError

_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9_]+")
_VERSION_NAME = re.compile(r"[A-Za-z0-9_:+=][A-Za-z0-9._:+=-]*")
_BRANCH_NAME = re.compile(r"[A-Za-z0-9_:+=][A-Za-z0-9._/:+=-]*")
_NEGATIVE_NUMBER = re.compile(r"-\d+")

# --- URLs --------------------------------------------------------------------------------------


def deployment_url(
    base_url: str, deployment: str, version: str | int = LATEST, branch: str | None = None
) -> str:
    """
    Return the inference URL of a deployment, validating every part before any request.

    :param base_url: the workspace URL, e.g. ``https://acme.us-east-2.aws.modelbit.com``.
    :param deployment: deployment name (letters, digits, underscores).
    :param version: ``latest``, a version number, or an alias such as ``official``.
    :param branch: a git branch (``feature/x`` is sent as ``feature~x``); ``None`` means ``main``.
    :raises ModelbitInputError: naming the part that is invalid.
    """
    path = [_deployment_segment(deployment)]
    if branch is not None:
        path.append(_branch_segment(branch))
    path.append(_version_segment(version))
    return f"{base_url.rstrip('/')}/v1/{'/'.join(path)}"


def _deployment_segment(deployment: str) -> str:
    if not isinstance(deployment, str) or not _DEPLOYMENT_NAME.fullmatch(deployment):
        raise ModelbitInputError(
            f"Deployment name {deployment!r} is invalid: use letters, digits and underscores only.",
            deployment=str(deployment),
        )
    return deployment


def _version_segment(version: str | int) -> str:
    if isinstance(version, bool) or not isinstance(version, str | int):
        raise ModelbitInputError(f"Version {version!r} is invalid: use 'latest', a number or an alias.")
    text = str(version)
    if isinstance(version, int) or text.isdigit() or _NEGATIVE_NUMBER.fullmatch(text):
        if int(text) < 1:
            raise ModelbitInputError(f"Version {version!r} is invalid: version numbers start at 1.")
        return str(int(text))
    if not _VERSION_NAME.fullmatch(text) or ".." in text:
        raise ModelbitInputError(
            f"Version {version!r} is invalid: use 'latest', a number, or an alias made of "
            "letters, digits and . _ : + = - (no spaces, slashes or '..')."
        )
    return text


def _branch_segment(branch: str) -> str:
    valid = (
        isinstance(branch, str)
        and _BRANCH_NAME.fullmatch(branch) is not None
        and ".." not in branch
        and "//" not in branch
        and not branch.endswith("/")
    )
    if not valid:
        raise ModelbitInputError(
            f"Branch {branch!r} is invalid: use letters, digits and . _ / : + = - "
            "(no spaces, no '..', no empty path parts)."
        )
    return branch.replace("/", "~")
