"""Every Python example in the README runs as written (from the repository's root: here from a
scratch folder that holds the shipped models at the same place)."""

from __future__ import annotations

import os
import re
import runpy

import pytest

from tests.builders import MODELS, ROOT

EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs_as_written(tmp_path, monkeypatch, index):
    (tmp_path / "models").symlink_to(MODELS)
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"example{index}.py"
    script.write_text(EXAMPLES[index])
    runpy.run_path(os.fspath(script), run_name="__main__")
