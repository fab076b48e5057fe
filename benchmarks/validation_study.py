"""Does validation tell a correct fold from a wrong one, on real exports?

For each model in a folder (real architectures with trained-looking BatchNormalization statistics:
`benchmarks/export_real_models.py` makes them), this folds it with bnfold, then

- validates the correct fold for each seed: it must pass (a false alarm otherwise), and its
  `limit_used` (deviation over limit, worst output) says how close it came;
- corrupts one folded channel (its weights ×(1+1e-3), then instead its bias) in several layers and
  validates again. A corruption that moves some output element at least 10× more than the correct
  fold does must fail (a miss otherwise).

    .venv/bin/python benchmarks/validation_study.py /work/realmodels --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/validation_study.py \
        ../shared/corpus/onnxruntime/onnxruntime/test/testdata/transform/fusion/fuse-conv-bn*.onnx

Writes a table to stdout and the numbers as JSON (--json FILE). Uses the CPU provider only unless
--providers says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bnfold  # noqa: E402
from bnfold.graphs import node_label  # noqa: E402
from bnfold.validation import validate  # noqa: E402
from bnfold.validation.inputs import make_samples  # noqa: E402
from bnfold.validation.providers import SessionFactory  # noqa: E402
from bnfold.validation.runs import SessionSource, run_model  # noqa: E402

CORRUPTION = 1e-3
ENOUGH = 10.0  # a corruption must be caught when it moves an output this much more than the fold
ROUNDING = 2.0**-23  # an ULP, relative to an output's largest value


def corrupted(model: onnx.ModelProto, layer: str, part: str) -> onnx.ModelProto:
    """A copy with output channel 0 of `layer`'s weight (part "weight") or bias moved by
    CORRUPTION (relative)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = next((n for n in copy.graph.node if layer in (n.name, node_label(n))), None)
    if node is None:  # (a layer inside a subgraph: not corrupted here)
        return None
    tensor = _held_in(copy.graph, node, part)
    if tensor is None:
        return None
    values = numpy_helper.to_array(tensor).astype(np.float64).copy()
    if part == "weight":
        values[0] *= 1 + CORRUPTION
    else:
        values[0] += CORRUPTION * max(abs(values[0]), float(np.abs(values).mean()))
    tensor.CopyFrom(
        numpy_helper.from_array(values.astype(numpy_helper.to_array(tensor).dtype), tensor.name)
    )
    return copy


def _held_in(graph: onnx.GraphProto, node: onnx.NodeProto, part: str):
    """The initializer holding `node`'s weight or bias, output channel 0 first: inputs 1 and 2;
    for a MatMul with its weight on the left (`W[C, K] · x`), input 0 and the constant of the
    Add after it. None where there is none."""
    initializers = {t.name: t for t in graph.initializer}
    if node.op_type == "MatMul" and node.input[0] in initializers:
        if part == "weight":
            return initializers[node.input[0]]
        add = next(
            (n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input), None
        )
        return (
            next((initializers[i] for i in add.input if i in initializers), None) if add else None
        )
    index = 1 if part == "weight" else 2
    return initializers.get(node.input[index]) if len(node.input) > index else None


def outputs(model: onnx.ModelProto | Path, seed: int) -> dict:
    import onnxruntime

    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    described = bnfold.load_model(model) if isinstance(model, Path) else model
    feeds = make_samples(described, seed=seed).runs
    result = run_model(
        SessionFactory(onnxruntime), SessionSource(source), "CPUExecutionProvider", feeds
    )
    return result[0]


def max_deviation(a: dict, b: dict) -> float:
    return max(
        float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].dtype.kind == "f"
    )


def worst(report) -> float:
    return max((c.limit_used for p in report.providers for c in p.outputs), default=0.0)


def study(path: Path, seeds: list[int], providers: str, layers: int) -> dict:
    fold = bnfold.fold(path)
    row: dict = {"model": path.stem, "folded": len(fold.folded) + len(fold.folded_affine)}
    row["correct"] = []
    for seed in seeds:
        started = time.perf_counter()
        report = validate(path, fold.model, providers=providers, seed=seed)
        row["correct"].append(
            {
                "seed": seed,
                "passed": report.passed,
                "limit_used": worst(report),
                "seconds": round(time.perf_counter() - started, 2),
                "warnings": report.warnings,
            }
        )
    targets = sorted({r.into for r in fold.folded})
    step = max(1, len(targets) // layers)
    reference = outputs(path, seeds[0])
    fold_moves = max_deviation(reference, outputs(fold.model, seeds[0]))
    row["fold_moves"] = fold_moves
    # below this, a move is the output's own rounding (a model whose outputs hardly depend on
    # anything: validation warns that it proves little, and nothing can be caught)
    row["rounding_level"] = ROUNDING * max(
        float(np.max(np.abs(v))) for v in reference.values() if v.dtype.kind == "f"
    )
    row["corruptions"] = []
    for layer in targets[::step][:layers]:
        for part in ("weight", "bias"):
            bad = corrupted(fold.model, layer, part)
            if bad is None:
                continue
            moves = max_deviation(reference, outputs(bad, seeds[0]))
            report = validate(path, bad, providers=providers, seed=seeds[0])
            row["corruptions"].append(
                {
                    "layer": layer,
                    "part": part,
                    "moves": moves,
                    "ratio_to_fold": moves / max(fold_moves, row["rounding_level"]),
                    "caught": not report.passed,
                    "limit_used": worst(report),
                }
            )
    return row


def _warned(row: dict) -> str:
    said = {_gist(w) for c in row["correct"] for w in c["warnings"]}
    return "; ".join(sorted(said)) or "-"


def table_line(row: dict) -> str:
    """The model's line of the table the script prints (and docs/validation_study.md holds)."""
    passed = sum(c["passed"] for c in row["correct"])
    used = max(c["limit_used"] for c in row["correct"])
    big = [c for c in row["corruptions"] if c["ratio_to_fold"] >= ENOUGH]
    small = [c for c in row["corruptions"] if c["ratio_to_fold"] < ENOUGH]
    missed = [
        f"{c['layer']}/{c['part']} ({c['ratio_to_fold']:.0f}×)" for c in big if not c["caught"]
    ]
    return (
        f"| {row['model']} | {row['folded']} | {passed}/{len(row['correct'])} | {used:.2f} | "
        f"{sum(c['caught'] for c in big)}/{len(big)} | {', '.join(missed) or '-'} | "
        f"{sum(c['caught'] for c in small)}/{len(small)} | {_warned(row)} |"
    )


def _gist(warning: str) -> str:
    """A warning's first clause (before its parenthesis or its `: advice`), for a table cell:
    an output name may hold a colon (`Identity:0`), so only `: ` ends the clause."""
    return warning.split(" (")[0].split(": ")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="models, or folders of them")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--layers", type=int, default=4, help="layers corrupted per model")
    parser.add_argument("--models", nargs="*", help="file stems to study (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    print(
        "| model | folded | correct: passed | worst limit used | corruptions ≥10× caught | "
        "missed | smaller ones caught | warnings |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    paths = [
        p for path in args.paths for p in (sorted(path.glob("*.onnx")) if path.is_dir() else [path])
    ]
    for path in paths:
        if args.models and path.stem not in args.models:
            continue
        row = study(path, args.seeds, args.providers, args.layers)
        rows.append(row)
        print(table_line(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
