"""Every Python example in the README runs as written (from the repository's root: here from a
scratch folder that holds the shipped models at the same place)."""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import pytest

import bnfold
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


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Layout", 1)[1].split("\n## ", 1)[0]


def test_the_layout_names_nothing_that_is_not_there():
    """Every path the table's first column gives, and every `name.py` in a folder's row."""
    package = Path(bnfold.__file__).parent
    absent = []
    for line in _layout().splitlines():
        if not line.startswith("| `"):
            continue
        key = line.split("|")[1].strip().strip("`")
        where = package.parent if key.startswith("bnfold") else ROOT
        if not (where / key).exists():
            absent.append(key)
        if key.endswith("/"):
            for name in re.findall(r"`(\w+\.py)`", line.split("|")[2]):
                found = list((where / key).rglob(name))
                if not found:
                    absent.append(f"{key}{name}")
    assert absent == []


def _python_files() -> list[str]:
    """The package's modules (where it is imported from: the wheel's, in the sdist's test run)
    and the repository's scripts, as paths from the root."""
    package = Path(bnfold.__file__).parent
    found = [f"bnfold/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")]
    for folder in ("benchmarks", "models", "tests"):
        found += [f"{folder}/{p.name}" for p in (ROOT / folder).glob("*.py")]
    return sorted(found)


def test_the_layout_names_every_module():
    """Each module and test file is in the table: its path, or its name in the row of its folder
    (the subpackages' `__init__.py` aside)."""
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in _layout().splitlines()
        if line.startswith("| `")
    }
    missing = []
    for path in _python_files():
        folder, name = path.rsplit("/", 1)
        if path in rows or (name == "__init__.py" and folder != "bnfold"):
            continue
        if not any(
            f"`{name}`" in row and (key.rstrip("/") == folder or key.startswith(folder + "/"))
            for key, row in rows.items()
        ):
            missing.append(path)
    assert missing == []
