"""bnfold against other tools on real PyTorch exports: BN left, nodes left, outputs still equal.

Exports torchvision models and two small hand-written ones (random weights and random BN
statistics, nothing downloaded) with several exporter flavours, runs every tool on each export
(each tool in its own process, stopped after --timeout seconds) and writes
`docs/comparison.md` and `docs/comparison.json`.

torch is not a bnfold dependency: run this from its own virtual environment, outside the repository
(the tools come from bench.py; bnfold is imported from this checkout, whatever is installed):

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/torchenv/bin/pip install -e . onnxscript onnxoptimizer onnxsim onnxslim

    /work/torchenv/bin/python benchmarks/compare_exports.py  # all: ~4 min, 5 exporting
    /work/torchenv/bin/python benchmarks/compare_exports.py --models resnet18 --flavours dynamo

Exports are cached in --cache (default: `bnfold-compare-exports/` in the temp folder, one
subfolder per torch version); --fresh exports again. A flavour that fails to export is recorded
with its error, not retried until --fresh.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner

ROOT = Path(__file__).resolve().parent.parent
# bnfold from this checkout, in this process and in the tool processes bench.py starts.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402

import bnfold  # noqa: E402

TOOLS = [t for t in bench.TOOLS if t != "load+save"]
# Largest max|output − original| / max|original| that still counts as the same function.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}

# --------------------------------------------------------------------------- models


def _torch():
    import torch
    import torchvision

    return torch, torchvision


def _randomize_batchnorm(model):
    """Random, non-trivial BN statistics and affine parameters (a fresh model has mean 0, var 1,
    γ 1, β 0, which would make every fold look exact), then eval mode."""
    torch, _ = _torch()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))
    return model.eval()


def _preact_resnet():
    """Pre-activation ResNet (He et al. 2016): BN → ReLU → Conv inside each block, and a BN after
    the last residual Add. Only the BN right after a Conv can be folded exactly."""
    torch, _ = _torch()
    nn = torch.nn

    class PreActBlock(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

        def forward(self, x):
            out = self.conv1(torch.relu(self.bn1(x)))
            return x + self.conv2(torch.relu(self.bn2(out)))

    class PreActResNet(nn.Module):
        def __init__(self, channels: int = 16, blocks: int = 3, classes: int = 10):
            super().__init__()
            self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
            self.blocks = nn.Sequential(*(PreActBlock(channels) for _ in range(blocks)))
            self.bn = nn.BatchNorm2d(channels)
            self.fc = nn.Linear(channels, classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.blocks(self.stem(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return PreActResNet(), {PreActBlock}


def _mlp_batchnorm1d():
    """Linear → BatchNorm1d (folds backward into the Linear) → ReLU → BatchNorm1d → Linear
    (folds only forward, into the Linear after it), with the last pair as a module of its own."""
    torch, _ = _torch()
    nn = torch.nn

    class NormLinear(nn.Module):
        def __init__(self, features: int, out: int):
            super().__init__()
            self.bn = nn.BatchNorm1d(features)
            self.fc = nn.Linear(features, out)

        def forward(self, x):
            return self.fc(self.bn(x))

    model = nn.Sequential(
        nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), NormLinear(64, 64), NormLinear(64, 10)
    )
    return model, {NormLinear}


def _torchvision(name: str, block: str):
    def build():
        _, torchvision = _torch()
        model = getattr(torchvision.models, name)(weights=None)
        classes = {
            type(m) for m in model.modules() if type(m).__name__ == block
        }  # the block class of that architecture, for local functions
        return model, classes

    return build


@dataclass(frozen=True)
class ModelSpec:
    build: Callable  # () -> (torch module, classes to export as local functions)
    input_shape: tuple[int, ...]
    note: str


MODELS = {
    "resnet18": ModelSpec(_torchvision("resnet18", "BasicBlock"), (1, 3, 64, 64), "torchvision"),
    "mobilenet_v2": ModelSpec(
        _torchvision("mobilenet_v2", "InvertedResidual"), (1, 3, 64, 64), "torchvision"
    ),
    "densenet121": ModelSpec(
        _torchvision("densenet121", "_DenseLayer"), (1, 3, 64, 64), "torchvision"
    ),
    "efficientnet_b0": ModelSpec(
        _torchvision("efficientnet_b0", "MBConv"), (1, 3, 64, 64), "torchvision"
    ),
    "preact_resnet": ModelSpec(_preact_resnet, (1, 3, 32, 32), "3 pre-activation blocks"),
    "mlp_batchnorm1d": ModelSpec(_mlp_batchnorm1d, (4, 32), "BatchNorm1d → Linear"),
}

# --------------------------------------------------------------------------- exporter flavours


@dataclass(frozen=True)
class Flavour:
    description: str
    options: dict = field(default_factory=dict)  # torch.onnx.export keyword arguments
    functions: bool = False  # export the model's block classes as local functions
    half: bool = False  # model.half() and an fp16 input

    def export_options(self, classes: set) -> dict:
        options = dict(self.options)
        if self.functions:
            options["export_modules_as_functions"] = classes
        return options


TORCHSCRIPT = {"dynamo": False, "opset_version": 17}
DYNAMO = {"dynamo": True, "external_data": False}
FLAVOURS = {
    "torchscript": Flavour(
        "`dynamo=False, opset_version=17`: the TorchScript exporter; its constant folding "
        "(on by default) already fuses Conv → BN in eval mode",
        TORCHSCRIPT,
    ),
    "torchscript-nofold": Flavour(
        "TorchScript exporter with `do_constant_folding=False`: every BN exported",
        {**TORCHSCRIPT, "do_constant_folding": False},
    ),
    "torchscript-functions": Flavour(
        "TorchScript exporter, `do_constant_folding=False`, `export_modules_as_functions=` the "
        "architecture's block class: BN inside model-local functions",
        {**TORCHSCRIPT, "do_constant_folding": False},
        functions=True,
    ),
    "dynamo": Flavour(
        "`dynamo=True` (default `optimize=True`: onnxscript's optimizer, which fuses Conv → BN, "
        "runs inside the exporter)",
        DYNAMO,
    ),
    "dynamo-raw": Flavour(
        "`dynamo=True, optimize=False`: the raw graph (opset 18+, constants as nodes)",
        {**DYNAMO, "optimize": False},
    ),
    "torchscript-nofold-fp16": Flavour(
        "as torchscript-nofold, after `model.half()` (fp16 weights, BN statistics and input)",
        {**TORCHSCRIPT, "do_constant_folding": False},
        half=True,
    ),
    "dynamo-raw-fp16": Flavour(
        "as dynamo-raw, after `model.half()`", {**DYNAMO, "optimize": False}, half=True
    ),
}


def export(name: str, flavour_name: str, cache: Path, fresh: bool) -> tuple[Path | None, str]:
    """(path of the cached export, "") or (None, why it could not be exported)."""
    path = cache / f"{name}.{flavour_name}.onnx"
    failed = path.with_suffix(".error.txt")
    if not fresh and path.exists():
        return path, ""
    if not fresh and failed.exists():
        return None, failed.read_text()
    path.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    torch, _ = _torch()
    spec, flavour = MODELS[name], FLAVOURS[flavour_name]
    torch.manual_seed(0)
    model, classes = spec.build()
    model = _randomize_batchnorm(model)
    x = torch.randn(*spec.input_shape)
    if flavour.half:
        model, x = model.half(), x.half()
    try:
        with _quiet():
            torch.onnx.export(model, (x,), str(path), **flavour.export_options(classes))
        onnx.load(path)  # a half-written or unreadable file counts as a failed export
    except Exception as exc:
        path.unlink(missing_ok=True)
        why = _one_line(f"{type(exc).__name__}: {exc}")
        failed.write_text(why)
        return None, why
    return path, ""


@contextlib.contextmanager
def _quiet():
    """Exporters print progress and warnings; keep the script's own output readable."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- measuring


def census(path: Path) -> dict:
    """BN and nodes counted after inlining model-local functions (so a function's body counts once
    per call, and flavours with and without functions compare), subgraphs included. "bn" counts
    BatchNormalization nodes and BN written as arithmetic alike: the Mul/Add nodes by per-channel
    constants next to a layer that bnfold's analysis recognises (`folded_affine` and
    `skipped_affine` of folding the file), "arithmetic" those alone."""
    model = onnx.inliner.inline_local_functions(onnx.load(path))
    counts = Counter(_op_types(model.graph))
    try:
        result = bnfold.fold(model)
        arithmetic = len(result.folded_affine) + len(result.skipped_affine)
    except bnfold.InputError:  # (a model bnfold refuses has none it could recognise)
        arithmetic = 0
    bn = counts["BatchNormalization"] + arithmetic
    return {"bn": bn, "arithmetic": arithmetic, "nodes": sum(counts.values())}


def _op_types(graph: onnx.GraphProto):
    for node in graph.node:
        yield node.op_type
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _op_types(attribute.g)
            for sub in attribute.graphs:
                yield from _op_types(sub)


def relative_error(original: Path, produced: Path) -> float | str:
    """max over outputs of max|produced − original| / max|original|, both run by onnxruntime with
    optimisations off on the same seeded input; a string if either cannot run."""
    import onnxruntime as ort

    off = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        reference, candidate = bench._session(original, off), bench._session(produced, off)
        feeds = _inputs(reference)
        want, got = reference.run(None, feeds), candidate.run(None, feeds)
    except Exception as exc:
        # onnxruntime's message starts with the file name: keep what it says is wrong
        return _one_line(re.sub(r"^.*? failed:", "", f"{exc}") or type(exc).__name__)
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return f"output shape {b.shape} instead of {a.shape}"
        diff = np.max(np.abs(a - b)) if a.size else 0.0
        worst = max(worst, float(diff / max(np.max(np.abs(a)) if a.size else 0.0, 1e-12)))
    return worst


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _inputs(session) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        feeds[arg.name] = rng.standard_normal(shape).astype(_NUMPY_TYPES[arg.type])
    return feeds


def bnfold_reasons(path: Path) -> dict[str, int]:
    """Why bnfold leaves each BN it leaves, names replaced by '…', counted."""
    result = bnfold.fold(path)
    return dict(Counter(re.sub(r"'[^']*'", "'…'", r.reason) for r in result.skipped))


def run_tool(tool: str, source: Path, work: Path, timeout: float, tolerance: float) -> dict:
    target = work / f"{tool}.onnx"
    target.unlink(missing_ok=True)
    seconds, _, error, _ = bench.measure(bench.command(tool, source, target), timeout)
    row = {"tool": tool, "seconds": round(seconds, 2), "error": error}
    if error or not target.exists():
        row["error"] = error or "wrote no model"
        return row
    left = census(target)
    error_or_rel = relative_error(source, target)
    row.update(bn_left=left["bn"], nodes_left=left["nodes"])
    if isinstance(error_or_rel, str):
        row.update(equal=None, rel_error=None, error=f"does not run: {error_or_rel}")
    else:
        row.update(equal=error_or_rel <= tolerance, rel_error=error_or_rel)
    return row


def compare(name: str, flavour_name: str, args, work: Path) -> dict:
    path, why = export(name, flavour_name, args.cache, args.fresh)
    if path is None:
        return {"model": name, "flavour": flavour_name, "export_error": why}
    dtype = "float16" if FLAVOURS[flavour_name].half else "float32"
    return compare_file(path, name, flavour_name, dtype, args, work)


def compare_file(path: Path, name: str, flavour_name: str, dtype: str, args, work: Path) -> dict:
    """Every tool on one ONNX file: BN and nodes left, outputs equal, time."""
    case: dict = {"model": name, "flavour": flavour_name}
    original = census(path)
    case.update(dtype=dtype, bn=original["bn"], nodes=original["nodes"], tools=[])
    runs = relative_error(path, path)  # does onnxruntime run the export itself?
    if isinstance(runs, str):
        case["original_error"] = runs
    if original["bn"] == 0:
        return case  # nothing for any tool to fold
    for tool in args.tools:
        row = run_tool(tool, path, work, args.timeout, TOLERANCE[dtype])
        case["tools"].append(row)
        print(f"  {tool:14} {_cell(row)}", flush=True)
    if not any(r["tool"] == "bnfold" and r["error"] for r in case["tools"]):
        case["bnfold_skipped"] = bnfold_reasons(path)
    return case


# --------------------------------------------------------------------------- report

# What the other tools do, as observed with the versions in the report (not re-derived per run).
NOTES = [
    "Notes on the other tools (observed with the versions above):",
    "",
    "- The exporters fold too: the TorchScript exporter's constant folding (on by default) and "
    "the dynamo exporter's `optimize=True` (onnxscript's optimizer) fuse Conv → BN, so default "
    "exports keep only the BN no backward fold can remove (after Concat, Add, pooling, ReLU).",
    "- onnxruntime and onnxscript inline model-local functions; bnfold inlines the calls of "
    "functions whose BN can fold (and says which); onnxoptimizer, onnxsim and onnxslim keep them.",
    "- onnxoptimizer's `fuse_bn_into_conv` leaves the new weights as a subgraph of "
    "Sqrt/Div/Mul/Sub/Unsqueeze/Cast nodes computed at run time (its larger node counts).",
    "- onnxruntime's optimized model is written for its CPU provider: for fp16 models it inserts "
    "Cast nodes around the ops it has no fp16 CPU kernel for.",
    "- Fewer nodes than bnfold with the same BN: onnxsim, onnxslim, onnxscript and onnxruntime "
    "also fold constants and remove other nodes (Constant, Clip bounds, the dynamo graph's "
    "Shape/Expand/CastLike bias subgraphs); bnfold removes only BN (and Mul/Add folded like "
    "one) and the constants and constant subgraphs they leave unused.",
]


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if "bn_left" not in row:
        return f"error: {_one_line(row['error'], 80)}"
    if row["equal"] is None:
        verdict = f"✗ ({_one_line(row['error'], 80)})"
    else:
        verdict = "✓" if row["equal"] else f"✗ (rel {row['rel_error']:.1e})"
    return f"{row['bn_left']} / {row['nodes_left']} {verdict} {row['seconds']:.1f} s"


def verdicts(cases: list[dict]) -> dict[str, dict]:
    """Per tool: BN left in total (outputs equal), exports where it breaks the model, fails, or
    leaves more BN than the best correct tool."""
    summary = {t: Counter() for t in TOOLS}
    for case in cases:
        rows = {r["tool"]: r for r in case.get("tools", [])}
        correct = {t: r["bn_left"] for t, r in rows.items() if r.get("equal")}
        best = min(correct.values(), default=None)
        for tool, row in rows.items():
            s = summary[tool]
            s["exports"] += 1
            s["bn"] += case["bn"]
            s["seconds"] += 0 if math.isnan(row["seconds"]) else row["seconds"]
            if tool in correct:
                s["bn_left"] += correct[tool]
                s["best"] += correct[tool] == best
            elif "bn_left" in row:
                s["wrong"] += 1
            else:
                s["failed"] += 1
    return summary


def standing(case: dict) -> str:
    """Where bnfold stands on one export, counting only tools whose outputs are equal: "broken"
    (it fails or changes the outputs), "more" (another tool leaves fewer BN), "tied" or "fewest"."""
    rows = {r["tool"]: r for r in case.get("tools", [])}
    ours = rows["bnfold"]
    if not ours.get("equal"):
        return "broken"
    others = [r["bn_left"] for t, r in rows.items() if t != "bnfold" and r.get("equal")]
    if any(n < ours["bn_left"] for n in others):
        return "more"
    return "tied" if ours["bn_left"] in others else "fewest"


def _standing_row(case: dict) -> str:
    """One line of the headline table: BN in the export, left by bnfold, fewest left by another
    tool with equal outputs (and which), and bnfold's standing."""
    rows = {r["tool"]: r for r in case["tools"]}
    ours = rows["bnfold"]
    correct = {t: r["bn_left"] for t, r in rows.items() if t != "bnfold" and r.get("equal")}
    fewest = min(correct.values(), default=None)
    best = ", ".join(t for t, n in correct.items() if n == fewest)
    word = {
        "fewest": "bnfold fewest",
        "tied": "tie",
        "more": "**another tool leaves fewer**",
        "broken": f"**bnfold: {_cell(ours)}**",
    }[standing(case)]
    left = ours.get("bn_left", "–")
    return (
        f"| {case['model']} | {case['flavour']} | {case['bn']} | {left} "
        f"| {fewest if fewest is not None else '–'} ({best}) | {word} |"
    )


def write_report(folder: Path, cases: list[dict], args, elapsed: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    found = versions()
    summary = verdicts(cases)
    lines = [
        "# bnfold and other tools on real PyTorch exports",
        "",
        f"`benchmarks/compare_exports.py` on {platform.machine()} with {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, {elapsed / 60:.0f} min. Versions: "
        + ", ".join(f"{k} {v}" for k, v in found.items())
        + ".",
        "",
        "Models have random weights and random BN statistics (nothing downloaded), in eval mode. "
        "Each tool runs as its own process on the exported file, stopped after "
        f"{args.timeout:.0f} s. BN and nodes are counted after inlining local functions. Outputs "
        "are compared in onnxruntime (CPU, `ORT_DISABLE_ALL` for both models, one seeded N(0,1) "
        "input): equal when max|diff| / max|original| ≤ "
        + " (float32), ".join(f"{v:g}" for v in TOLERANCE.values())
        + " (float16).",
        "",
        "Exports from other frameworks (Keras 2 and 3 through tf2onnx with and without its "
        "optimizers, PaddlePaddle, Flax/JAX, timm, torchvision, ultralytics; BN written as Mul/Add "
        "counted too): [comparison_files.md](comparison_files.md).",
        "",
        "Tools, as `benchmarks/bench.py` runs them: `bnfold IN -o OUT --no-validate`; "
        "onnxruntime writing `optimized_model_filepath` at `ORT_ENABLE_BASIC` (which includes "
        "its Conv+BN fusion; `ORT_ENABLE_ALL` may write contrib ops); onnxoptimizer with "
        "`fuse_bn_into_conv`; `onnxsim.simplify`; `onnxslim.slim`; "
        "`onnxscript.optimizer.optimize` (constant folding plus its default rewrite rules, "
        "which fuse BN into Conv, ConvTranspose and Gemm; it inlines functions).",
        "",
        "## Summary",
        "",
        "Over every export with BN in it: BN left in total (counting only outputs that are still "
        "equal), exports where the tool leaves the fewest BN of all tools with equal outputs, "
        "exports it changes the outputs of, exports it fails on, and its total time.",
        "",
        "| tool | BN left | fewest (ties included) | outputs changed | failed | time s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(_summary_row(tool, counts) for tool, counts in summary.items())
    lines += [
        "",
        "Per export with BN in it: BN left by bnfold against the fewest left by any other tool "
        "whose outputs are equal.",
        "",
        "| model | flavour | BN in export | bnfold leaves | fewest by another tool | standing |",
        "| --- | --- | --- | --- | --- | --- |",
        *(_standing_row(c) for c in cases if c.get("tools")),
        "",
        *NOTES,
        "",
        "## Why bnfold leaves the BN it leaves",
        "",
        "From `bnfold.fold(...).skipped`, names replaced by '…'. A BN inside a local function "
        "is one record however often the function is called.",
        "",
        "| model | flavour | records | reason |",
        "| --- | --- | --- | --- |",
    ]
    lines.extend(_reason_rows(cases))
    lines += ["", "## Per model", ""]
    lines += [
        "Each cell: BN left / nodes left, ✓ outputs equal or ✗ changed (relative error) or "
        "does not run, and the tool's time (whole process). "
        "`–`: the export has no BN, so no tool was run.",
        "",
        "Flavours:",
        "",
        *(f"- **{n}**: {f.description}" for n, f in FLAVOURS.items() if n in args.flavours),
    ]
    for name in args.models:
        shape = "×".join(map(str, MODELS[name].input_shape))
        lines += [
            "",
            f"### {name} ({MODELS[name].note}, input {shape})",
            "",
            "| flavour | BN / nodes in export | " + " | ".join(args.tools) + " |",
            "| --- | --- | " + " | ".join("---" for _ in args.tools) + " |",
        ]
        for case in (c for c in cases if c["model"] == name):
            lines.append(_case_line(case, args.tools))
    (folder / "comparison.md").write_text("\n".join(lines) + "\n")
    (folder / "comparison.json").write_text(
        json.dumps(
            {"versions": found, "timeout": args.timeout, "tolerance": TOLERANCE, "cases": cases},
            indent=1,
        )
        + "\n"
    )


def _summary_row(tool: str, counts: Counter) -> str:
    """One tool's line of the summary table (`verdicts`)."""
    return (
        f"| {tool} | {counts['bn_left']} of {counts['bn']} | {counts['best']} of "
        f"{counts['exports']} | {counts['wrong']} | {counts['failed']} | "
        f"{counts['seconds']:.0f} |"
    )


def _reason_rows(cases: list[dict]) -> list[str]:
    """Lines of the table of why bnfold left what it left, per case and reason."""
    return [
        f"| {case['model']} | {case['flavour']} | {count} | {reason} |"
        for case in cases
        for reason, count in case.get("bnfold_skipped", {}).items()
    ]


def _case_line(case: dict, tools: list[str]) -> str:
    if "export_error" in case:
        return f"| {case['flavour']} | export failed: {_one_line(case['export_error'], 120)} |"
    rows = {r["tool"]: r for r in case["tools"]}
    cells = [_cell(rows.get(t)) if case["bn"] else "–" for t in tools]
    original = f"{case['bn']} / {case['nodes']}"
    if "original_error" in case:
        original += f" (does not run in onnxruntime: {case['original_error']})"
    return f"| {case['flavour']} | {original} | " + " | ".join(cells) + " |"


def versions() -> dict[str, str]:
    torch, torchvision = _torch()
    return {**bench.versions(), "torch": torch.__version__, "torchvision": torchvision.__version__}


# ----- files exported elsewhere (--files): tf2onnx, timm, ultralytics, ... ----------------------


def file_cases(paths: list[Path], args, work: Path) -> list[dict]:
    """`compare_file` on each file; its exporter from a manifest.json beside it (as
    `benchmarks/export_real_models.py` writes one), else "file"."""
    cases = []
    for path in paths:
        manifest = path.parent / "manifest.json"
        about = {}
        if manifest.exists():
            about = json.loads(manifest.read_text()).get("models", {}).get(path.stem, {})
        flavour = str(about.get("exporter", "file"))
        dtype = "float16" if "fp16" in path.stem else "float32"
        print(f"{path.stem} / {flavour}", flush=True)
        cases.append(compare_file(path, path.stem, flavour, dtype, args, work))
    return cases


def write_files_report(folder: Path, cases: list[dict], args, elapsed: float) -> None:
    """docs/comparison_files.md and .json: the summary, the standings and bnfold's reasons."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = verdicts(cases)
    lines = [
        "# bnfold and other tools on exports from other frameworks",
        "",
        f"`benchmarks/compare_exports.py --files ...` on {platform.machine()} with "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {elapsed / 60:.0f} min. Versions: "
        + ", ".join(f"{k} {v}" for k, v in bench.versions().items())
        + ".",
        "",
        "The files of `benchmarks/export_real_models.py` (Keras through tf2onnx with and without "
        "its optimizers, timm, torchvision, ultralytics; trained-looking BN statistics), each "
        "tool in its own process as in `comparison.md`, stopped after "
        f"{args.timeout:.0f} s; outputs compared the same way. BN counts BatchNormalization "
        "nodes and BN written as arithmetic alike: each Mul/Add by per-channel constants next to "
        "a layer that bnfold's analysis recognises in a file (Keras' BatchNormalization(fused="
        "False), a Dense → BN) counts as one.",
        "",
        "| tool | BN left | fewest (ties included) | outputs changed | failed | time s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(_summary_row(t, counts) for t, counts in summary.items() if counts["exports"])
    lines += [
        "",
        "| model | exporter | BN in file | bnfold leaves | fewest by another tool | standing |",
        "| --- | --- | --- | --- | --- | --- |",
        *(_standing_row(c) for c in cases if c.get("tools")),
        "",
        "## Why bnfold leaves the BN it leaves",
        "",
        "| model | exporter | records | reason |",
        "| --- | --- | --- | --- |",
    ]
    lines.extend(_reason_rows(cases))
    lines += [
        "",
        "## Per file",
        "",
        "| model / exporter | BN / nodes in file | " + " | ".join(args.tools) + " |",
        "| --- | --- | " + " | ".join("---" for _ in args.tools) + " |",
    ]
    for case in cases:
        lines.append(
            _case_line({**case, "flavour": f"{case['model']} / {case['flavour']}"}, args.tools)
        )
    (folder / "comparison_files.md").write_text("\n".join(lines) + "\n")
    (folder / "comparison_files.json").write_text(
        json.dumps(
            {"versions": bench.versions(), "timeout": args.timeout, "cases": cases}, indent=1
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--flavours", nargs="*", choices=FLAVOURS, default=list(FLAVOURS))
    parser.add_argument("--tools", nargs="*", choices=TOOLS, help="default: all installed")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per tool run")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bnfold-compare-exports",
        help="folder of exported models (a subfolder per torch version)",
    )
    parser.add_argument("--fresh", action="store_true", help="export again, ignoring the cache")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write results")
    parser.add_argument(
        "--files",
        nargs="+",
        type=Path,
        help="compare on these ONNX files instead of exporting (no torch needed); writes "
        "comparison_files.md",
    )
    args = parser.parse_args()
    # the tool processes bench.py starts import bnfold from this checkout too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    if args.files:
        args.tools = [t for t in bench.available_tools(args.tools) if t in TOOLS]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bnfold-compare-") as work:
            cases = file_cases(args.files, args, Path(work))
        write_files_report(args.out, cases, args, time.perf_counter() - start)
        print(f"wrote {args.out / 'comparison_files.md'}")
        return
    torch, _ = _torch()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.cache = args.cache / f"torch-{torch.__version__}"
    args.cache.mkdir(parents=True, exist_ok=True)
    args.tools = [t for t in bench.available_tools(args.tools) if t in TOOLS]
    start = time.perf_counter()
    cases = []
    with tempfile.TemporaryDirectory(prefix="bnfold-compare-") as work:
        for name in args.models:
            for flavour_name in args.flavours:
                print(f"{name} / {flavour_name}", flush=True)
                cases.append(compare(name, flavour_name, args, Path(work)))
    write_report(args.out, cases, args, time.perf_counter() - start)
    print(f"wrote {args.out / 'comparison.md'} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
