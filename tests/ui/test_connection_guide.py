"""The examples of docs/connection.md resolve to the settings the guide says they do."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "connection.md"
SHELL_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def documented_examples() -> list[tuple[str, str, dict[str, str]]]:
    """``(variable, value, expected settings)`` for every ``export`` followed by a ``# resolves to:`` line."""
    examples = []
    for block in SHELL_BLOCK.findall(GUIDE.read_text()):
        lines = block.strip().splitlines()
        for export, comment in itertools.pairwise(lines):
            if export.startswith("export AIRFLOW_CONN_") and comment.startswith("# resolves to:"):
                name, value = shlex.split(export.removeprefix("export "))[0].split("=", 1)
                expected = dict(pair.split("=", 1) for pair in comment.removeprefix("# resolves to:").split())
                examples.append((name, value, expected))
    return examples


EXAMPLES = documented_examples()


class TestConnectionGuide:
    def test_the_guide_has_uri_json_workspace_and_callback_examples(self) -> None:
        values = [value for _, value, _ in EXAMPLES]
        assert any(value.startswith("modelbit://") for value in values)
        assert any(value.startswith("{") for value in values)
        assert any('"workspace"' in value for value in values)
        assert any("callback_secret" in value for value in values)

    @pytest.mark.parametrize(("variable", "value", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
    def test_example_resolves_as_documented(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: dict[str, str]
    ) -> None:
        monkeypatch.setenv(variable, value)
        conn_id = variable.removeprefix("AIRFLOW_CONN_").lower()
        settings = ModelbitHook(modelbit_conn_id=conn_id).settings
        resolved = {field: str(getattr(settings, field)) for field in expected}
        assert resolved == expected

    def test_the_guide_names_every_field_of_the_form(self) -> None:
        from airflow_provider_modelbit.get_provider_info import CONNECTION_FIELDS, UI_FIELD_BEHAVIOUR

        guide = GUIDE.read_text()
        for name, field in CONNECTION_FIELDS.items():
            assert f"{field['label']} (`{name}`)" in guide
        for label in UI_FIELD_BEHAVIOUR["relabeling"].values():
            assert f"| {label} |" in guide
