"""The package's import graph has layers, and no module imports upwards (lazy imports inside
functions count too; `if TYPE_CHECKING:` imports and the package's lazy facade do not). I/O never
imports analysis; the graph layer never imports the rules; neither imports I/O or reads files
(the model file's formats: `skim`, `encoding`)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(importlib.import_module("bnfold").__file__).parent

# Lowest first. A module may import its own layer and the ones below.
LAYERS = [
    ("foundation", {"errors", "naming", "_version", "records", "numerics"}),
    ("data", {"protobuf_speed", "tensor_data", "encoding", "skim", "graphs"}),
    ("io", {"model_io"}),
    (
        "graph",
        {
            "constant_eval",
            "element_types",
            "graph_index",
            "graph_values",
            "graph_editor",
            "graph_view",
            "batchnorm",
        },
    ),
    ("rules", {"affine", "producers", "batched", "functions"}),
    ("pass", {"folding", "graphsurgeon"}),
    ("validation", {"validation"}),
    ("pipeline", {"reporting", "pipeline", "view", "batch"}),
    ("command", {"console", "run", "cli", "__main__"}),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
ANALYSIS = (LAYER_OF["graph_view"], LAYER_OF["producers"])
# What analysis (the graph and the rules) never imports: I/O, and the file formats below it.
READS_FILES = {"model_io", "skim", "encoding"}


def top_module(path: Path) -> str:
    """The package's first-level module (or subpackage) a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def bnfold_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """The first-level bnfold modules `path` (a file under `root`, the package's folder)
    imports, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    package = path.relative_to(root).parts[:-1]  # where a relative import starts from
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    found.add(parts[0])
                else:  # `from . import a, b`
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "bnfold":
                rest = node.module.split(".")[1:]
                found.update(rest[:1] or [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "bnfold" and len(parts) > 1:
                    found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_layer():
    assert {top_module(p) for p in MODULES} <= set(LAYER_OF)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upwards(path):
    mine = LAYER_OF[top_module(path)]
    for imported in bnfold_imports(path) - {top_module(path)}:
        theirs = LAYER_OF[imported]
        assert theirs <= mine, (
            f"{top_module(path)} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[theirs][0]})"
        )
        if mine in ANALYSIS:
            assert imported not in READS_FILES, (
                f"analysis never imports I/O: {top_module(path)} imports {imported}"
            )


def test_the_fence_sees_imports_that_break_it(tmp_path):
    """The check itself: a lazy upward import counts, one only for type checkers does not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .errors import InputError\n"
        "from bnfold.graphs import subgraphs\n"
        "import bnfold.skim\n"
        "if TYPE_CHECKING:\n    from .pipeline import FileResult\n"
        "def later():\n    from .folding import fold\n    from . import view\n"
    )
    assert bnfold_imports(probe, root=tmp_path) == {"errors", "graphs", "skim", "folding", "view"}


def _speed_tricks(path: Path) -> list[str]:
    """Protobuf speed tricks in a module: attrgetter/itemgetter, the garbage collector switched,
    a repeated field read with `[:]` (clearing with `del x[:]` and `x[:] = ...` are protobuf's
    API, not tricks)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("attrgetter", "itemgetter"):
            found.append(f"operator.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and node.attr in ("disable", "enable", "freeze"):
            if isinstance(node.value, ast.Name) and node.value.id == "gc":
                found.append(f"gc.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            whole = node.slice
            if isinstance(whole, ast.Slice) and not (whole.lower or whole.upper or whole.step):
                found.append(f"[:] (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_protobuf_speed_tricks_live_in_one_module(path):
    """`protobuf_speed.py` holds them; every other module asks it (`listed`, `OP_TYPE`, ...)."""
    if path.name != "protobuf_speed.py":
        assert _speed_tricks(path) == [], top_module(path)


def test_the_speed_check_sees_the_tricks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import gc, operator\nNAME = operator.attrgetter('name')\ngc.disable()\n"
        "def f(node):\n    del node.input[:]\n    node.input[:] = ['a']\n    return node.input[:]\n"
    )
    assert _speed_tricks(probe) == [
        "operator.attrgetter (line 2)",
        "gc.disable (line 3)",
        "[:] (line 7)",
    ]
