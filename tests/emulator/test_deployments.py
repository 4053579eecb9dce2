"""Deployment registry, built-in examples and ``--deployments`` files."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_modelbit.emulator.deployments import (
    DeploymentNotFound,
    DeploymentRegistry,
    DeploymentsFileError,
    build_registry,
    churn_scorer,
    echo,
)


class TestRegistry:
    def test_versions_number_up_and_aliases_move(self) -> None:
        registry = DeploymentRegistry()
        registry.add("model", lambda x: 1)
        registry.add("model", lambda x: 2, aliases=("official",))
        registry.add("model", lambda x: 3, aliases=("official",))
        assert registry.resolve("model", "main", "latest").version == 3
        assert registry.resolve("model", "main", "official").version == 3
        assert registry.resolve("model", "main", "1").version == 1

    @pytest.mark.parametrize(("name", "version"), [("bad-name", 1), ("ok", 0), ("ok", -2)])
    def test_invalid_registrations(self, name: str, version: int) -> None:
        with pytest.raises(ValueError, match=r"Deployment name|positive integer"):
            DeploymentRegistry().add(name, echo, version=version)

    def test_main_exists_even_if_empty(self) -> None:
        registry = DeploymentRegistry()
        registry.add("model", echo, branch="dev")
        with pytest.raises(DeploymentNotFound, match="no version 'latest'"):
            registry.resolve("model", "main", "latest")


class TestBuiltIns:
    @pytest.mark.parametrize(
        ("path", "argument", "expected"),
        [
            (("doubler", "main", "latest"), 4, 8),
            (("echo", "main", "latest"), "x", "x"),
            (("versioned", "main", "3"), 1, {"version": 3, "input": 1}),
            (("versioned", "feature/dev", "latest"), 1, {"branch": "dev", "version": 1, "input": 1}),
            (("sleeper", "main", "latest"), 0, 0),
        ],
    )
    def test_examples(self, path: tuple[str, str, str], argument: object, expected: object) -> None:
        assert build_registry().resolve(*path).function(argument) == expected

    def test_echo_returns_positional_arguments_as_list(self) -> None:
        assert echo(1, 2) == [1, 2]

    def test_raiser(self) -> None:
        with pytest.raises(ValueError, match="boom: 5"):
            build_registry().resolve("raiser", "main", "latest").function(5)

    def test_churn_scorer_is_a_deterministic_probability(self) -> None:
        import pandas as pd

        frame = pd.DataFrame(
            {
                "tenure_months": [0, 12, 120],
                "monthly_spend": [500.0, 20.0, 0.0],
                "plan": ["free", "pro", "unknown"],
            }
        )
        scores = churn_scorer(frame)
        assert scores.between(0, 1).all()
        assert scores.tolist() == churn_scorer(frame).tolist()


class TestDeploymentsFile:
    def test_register_function_adds_deployments(self, tmp_path: Path) -> None:
        source = tmp_path / "models.py"
        source.write_text(
            "def register(registry):\n    registry.add('tripler', lambda x: 3 * x, aliases=('official',))\n"
        )
        registry = build_registry(source)
        assert registry.resolve("tripler", "main", "official").function(2) == 6
        assert registry.resolve("doubler", "main", "latest").function(2) == 4

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (None, "does not exist"),
            ("x = 1\n", "must define register"),
            ("raise RuntimeError('bad')\n", "Importing"),
        ],
    )
    def test_errors_name_the_file(self, tmp_path: Path, content: str | None, message: str) -> None:
        source = tmp_path / "models.py"
        if content is not None:
            source.write_text(content)
        with pytest.raises(DeploymentsFileError, match=message) as raised:
            build_registry(source)
        assert str(source) in str(raised.value)
