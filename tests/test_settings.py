"""Settings rules that protect what goes into every message."""

from __future__ import annotations

from pathlib import Path

import pytest

from highlightsmail.errors import ValidationFailed
from highlightsmail.workspace import load_workspace


@pytest.mark.parametrize(
    "url", ["https://h.example.org/?a=1&b=2", "https://h.example.org/#x", 'https://h.example.org/"x']
)
def test_base_url_that_would_need_escaping_is_refused_at_its_place(workspace: Path, url: str) -> None:
    path = workspace / "highlights.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("base_url:"))
    lines[index] = f"base_url: '{url}'"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_workspace(workspace)
    [problem] = caught.value.problems
    assert (problem.line, problem.col) == (index + 1, 11)
    assert "base_url: must be a plain https://host[/path]" in problem.message


def test_base_url_with_a_path_is_fine(workspace: Path) -> None:
    path = workspace / "highlights.yaml"
    text = path.read_text(encoding="utf-8").replace(
        "base_url: https://highlights.example.org", "base_url: https://example.org/highlights"
    )
    path.write_text(text, encoding="utf-8")
    assert load_workspace(workspace).settings.base_url == "https://example.org/highlights"
