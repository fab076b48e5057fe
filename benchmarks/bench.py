"""bnfold benchmark: time and peak memory against `onnx.load` + `onnx.save`, against other tools
when installed, and the effect of folding on onnxruntime inference. One run, ratios in one table.

    python benchmarks/bench.py            # full: 12k/24k/48k-node chains, ResNet-152, WRN-101-2
    python benchmarks/bench.py --quick    # small models, seconds
    python benchmarks/bench.py --big      # and a 2.2 GB model with external data (minutes more)
    python benchmarks/bench.py --tools none   # bnfold and load+save only

Writes `docs/benchmark.md` (table, machine, versions) and `docs/benchmark.png` (needs matplotlib).
Every tool runs as its own process; time is wall-clock of the whole process, memory its peak RSS.
bnfold (`bnfold IN -o OUT --no-validate`) and `onnx.load` + `onnx.save` run --repeat times each,
alternating, and the medians are compared; the other tools run once.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# load+save and bnfold also say on stderr how long their work took, imports and start-up left out
WORK = "bench-work:"
_TIMED = (
    "import sys, time; {imports}; t = time.perf_counter()\n"
    "try:\n    {work}\n"
    "finally:\n    print({marker!r}, time.perf_counter() - t, file=sys.stderr)"
)
# Each tool: (python module that must be importable, script reading argv[1], writing argv[2]).
TOOLS = {
    "load+save": (  # external data stays external (in OUT.data), as bnfold does
        None,
        _TIMED.format(
            imports="import onnx, os",
            work="onnx.save(onnx.load(sys.argv[1]), sys.argv[2], "
            "save_as_external_data=os.path.exists(sys.argv[1] + '.data'), "
            "location=os.path.basename(sys.argv[2]) + '.data')",
            marker=WORK,
        ),
    ),
    "bnfold": (None, None),
    "onnxruntime": (
        "onnxruntime",
        "import onnxruntime as o,sys; s=o.SessionOptions(); "
        "s.graph_optimization_level=o.GraphOptimizationLevel.ORT_ENABLE_BASIC; "
        "s.optimized_model_filepath=sys.argv[2]; "
        "o.InferenceSession(sys.argv[1], s, providers=['CPUExecutionProvider'])",
    ),
    "onnxoptimizer": (
        "onnxoptimizer",
        "import onnx,onnxoptimizer,sys; m=onnx.load(sys.argv[1]); "
        "onnx.save(onnxoptimizer.optimize(m, ['fuse_bn_into_conv']), sys.argv[2])",
    ),
    "onnxsim": (
        "onnxsim",
        "import onnx,onnxsim,sys; m,_=onnxsim.simplify(onnx.load(sys.argv[1])); "
        "onnx.save(m, sys.argv[2])",
    ),
    "onnxslim": ("onnxslim", "import onnxslim,sys; onnxslim.slim(sys.argv[1], sys.argv[2])"),
    "onnxscript": (
        "onnxscript",
        "import onnx,onnxscript.optimizer as op,sys; "
        "onnx.save(op.optimize(onnx.load(sys.argv[1])), sys.argv[2])",
    ),
}


# `bnfold IN -o OUT --no-validate`, as the console script runs it
BNFOLD = _TIMED.format(  # (what the command imports as it starts, before the timer, as above)
    imports="import bnfold.cli, bnfold.run",
    work="sys.argv[0] = 'bnfold'; bnfold.cli.main()",
    marker=WORK,
)


# The floor of a validating command: load + save, then one onnxruntime session per model (the
# original, the saved copy), one after the other, each run once at ORT_DISABLE_ALL.
VALIDATION_RUNS = 9  # the default command against its floor: at least this many pairs
VALIDATION_FLOOR = _TIMED.format(
    imports="import gc, os, numpy as np, onnx, onnxruntime as o",
    work="""m = onnx.load(sys.argv[1])
    onnx.save(m, sys.argv[2], save_as_external_data=os.path.exists(sys.argv[1] + '.data'),
              location=os.path.basename(sys.argv[2]) + '.data')
    del m; gc.collect()
    for path in sys.argv[1:3]:
        so = o.SessionOptions()
        so.graph_optimization_level = o.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = o.InferenceSession(path, so, providers=['CPUExecutionProvider'])
        feeds = {i.name: np.random.default_rng(0).standard_normal(
            [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in s.get_inputs()}
        s.run(None, feeds); del s""",
    marker=WORK,
)
VALIDATING = _TIMED.format(
    imports="import bnfold.cli, bnfold.run, bnfold.validation.runs, onnxruntime",
    work="sys.argv[0] = 'bnfold'; bnfold.cli.main()",
    marker=WORK,
)


def validation_cost(source: Path, tmp: Path, repeat: int, timeout: float) -> dict:
    """The default command (`bnfold IN -o OUT`, validating on the CPU) against its floor
    (VALIDATION_FLOOR): medians of `repeat` alternating runs, the peaks, and each alternating
    pair's time ratio (the machine's I/O makes single runs vary by ±20 %: the median is the
    measure, the pairs show the spread)."""
    commands = {
        "floor": [PY, "-c", VALIDATION_FLOOR, str(source), str(tmp / "floor.onnx")],
        "bnfold": [
            PY,
            "-c",
            VALIDATING,
            str(source),
            "-o",
            str(tmp / "v.onnx"),
            "--providers",
            "cpu",
        ],
    }
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            runs[name].append(measure(cmd, timeout))
    result = {}
    for name, measured in runs.items():
        result[name] = {
            "seconds": statistics.median(r[0] for r in measured),
            "work_s": statistics.median(r[3] for r in measured),
            "peak_mb": max(r[1] for r in measured),
            "error": next((r[2] for r in measured if r[2]), ""),
        }
    floor, ours = result["floor"], result["bnfold"]
    result["runs"] = repeat
    result["pair_time_ratios"] = [
        b[0] / f[0] for f, b in zip(runs["floor"], runs["bnfold"], strict=True)
    ]
    result["time_ratio"] = ours["seconds"] / floor["seconds"]
    result["work_ratio"] = ours["work_s"] / floor["work_s"]
    result["memory_ratio"] = ours["peak_mb"] / floor["peak_mb"]
    return result


def startup_cost(repeat: int) -> dict:
    """`bnfold --help` and `bnfold --version` (the console script) against `python -c "import
    click"`: medians of `repeat` alternating runs, and the ratios."""
    script = str(Path(PY).with_name("bnfold"))
    commands = {
        "import click": [PY, "-c", "import click"],
        "bnfold --help": [script, "--help"],
        "bnfold --version": [script, "--version"],
    }
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            runs[name].append(time.perf_counter() - started)
    result = {name: statistics.median(times) for name, times in runs.items()}
    for name in ("bnfold --help", "bnfold --version"):
        result[f"{name} × import click"] = result[name] / result["import click"]
    return result


def command(tool: str, source: Path, target: Path) -> list[str]:
    if tool == "bnfold":
        return [PY, "-c", BNFOLD, str(source), "-o", str(target), "--no-validate"]
    return [PY, "-c", TOOLS[tool][1], str(source), str(target)]


# Peak memory is read with wait4 by a small launcher process: Linux keeps a process's peak RSS
# across exec, starting from its parent's RSS at fork, so a tool forked straight from this
# (large) process would report at least this process's size.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
marker = sys.argv[1]
child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
lines = child.stderr.read().decode(errors="replace").strip().splitlines()
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
work = [float(l.split()[-1]) for l in lines if l.startswith(marker)]
error = [l for l in lines if not l.startswith(marker)]
print(json.dumps({"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024,
                  "code": os.waitstatus_to_exitcode(status), "error": error[-1] if error else "",
                  "work": work[-1] if work else float("nan")}))
"""


def measure(cmd: list[str], timeout: float) -> tuple[float, float, str, float]:
    """(seconds, peak RSS in MB, error or "", seconds of work or nan) of one process."""
    launcher = subprocess.Popen(
        [PY, "-c", LAUNCHER, WORK, *cmd], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        out, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, 9)
        launcher.wait()
        return float("nan"), float("nan"), f"timeout {timeout:.0f} s", float("nan")
    result = json.loads(out)
    error = "" if result["code"] == 0 else (result["error"] or str(result["code"]))
    return result["seconds"], result["peak_mb"], error, result["work"]


def outcome(original: Path, produced: Path) -> dict:
    """BN and nodes left, and whether outputs equal the original's (ORT, optimisations off)."""
    model = onnx.load(produced, load_external_data=False)
    left = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    return {
        "bn_left": left,
        "nodes_left": len(model.graph.node),
        "equal": _same_outputs(original, produced),
    }


def _session(path: Path, level, provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[provider])
    if session.get_providers()[0] != provider:  # onnxruntime fell back to the CPU
        raise RuntimeError(f"{provider} could not be used")
    return session


def _same_outputs(original: Path, produced: Path) -> bool | None:
    import onnxruntime as ort

    off = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        a, b = _session(original, off), _session(produced, off)
    except Exception:
        return None
    shape = [d if isinstance(d, int) else 1 for d in a.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = a.get_inputs()[0].name
    want, got = a.run(None, {name: x})[0], b.run(None, {name: x})[0]
    return bool(np.max(np.abs(want - got)) <= 1e-4 * max(np.max(np.abs(want)), 1e-12))


def inference_effect(original: Path, folded: Path, runs: int) -> dict:
    """Session creation time and latency, original vs folded, at DISABLE_ALL and the default,
    on the CPU and, where onnxruntime has it, on CUDA (keys `provider/level/model`)."""
    import onnxruntime as ort

    result = {}
    providers = [p for p in EFFECT_PROVIDERS if p in ort.get_available_providers()]
    levels = (
        ("disable_all", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("default", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    )
    for provider, (label, level) in itertools.product(providers, levels):
        for which, path in (("original", original), ("folded", folded)):
            start = time.perf_counter()
            try:
                session = _session(path, level, provider)
            except Exception as exc:  # CUDA listed but not usable here: say so in the report
                result[f"{EFFECT_PROVIDERS[provider]}/{label}/{which}"] = {"error": str(exc)}
                continue
            created = time.perf_counter() - start
            feed = session.get_inputs()[0]
            shape = [d if isinstance(d, int) else 1 for d in feed.shape]
            x = {feed.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
            session.run(None, x)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, x)
                times.append(time.perf_counter() - start)
            result[f"{EFFECT_PROVIDERS[provider]}/{label}/{which}"] = {
                "create_s": created,
                "latency_ms": 1e3 * statistics.median(times),
            }
    return result


def available_tools(selected: list[str] | None) -> list[str]:
    names = []
    for name, (module, _) in TOOLS.items():
        if selected and name not in selected and name not in ("load+save", "bnfold"):
            continue
        if module is None or importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


EFFECT_PROVIDERS = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
BIG = "WRN-like, 2.2 GB, external data"  # --big: too slow for every run
EFFECT_MODEL = "WRN-101-2 (500 MB)"  # whose inference in onnxruntime is timed, folded or not


def benchmark_models(quick: bool, big: bool = False) -> dict[str, callable]:
    if quick:
        return {
            "chain 6k nodes": lambda: models.chain(2000),
            "chain 12k nodes": lambda: models.chain(4000),
            "If × 2,500": lambda: models.many_subgraphs(2500),
            # last: the model whose inference and validation cost are measured
            "resnet-50-like": lambda: models.resnet_like(16, (3, 4, 6, 3)),
        }
    return {
        "chain 12k nodes": lambda: models.chain(4000),
        "chain 24k nodes": lambda: models.chain(8000),
        "chain 48k nodes": lambda: models.chain(16000),
        "If × 5,000": lambda: models.many_subgraphs(5000),
        "If × 20,000": lambda: models.many_subgraphs(20000),
        "ResNet-152 (230 MB)": lambda: models.resnet_like(64, (3, 8, 36, 3)),
        EFFECT_MODEL: lambda: models.resnet_like(128, (3, 4, 23, 3)),
        **({BIG: lambda: models.resnet_like(300, (3, 4, 23, 3))} if big else {}),
    }


def save_source(model: onnx.ModelProto, label: str, path: Path) -> float:
    """Write a benchmark model (the big one with its tensors in `path`.data); its size in MB."""
    if label != BIG:
        onnx.save(model, path)
        return path.stat().st_size / 1e6
    data = path.with_name(path.name + ".data")
    onnx.save(model, path, save_as_external_data=True, location=data.name)
    return (path.stat().st_size + data.stat().st_size) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models only")
    parser.add_argument(
        "--big", action="store_true", help=f"also a model over 2 GB ({BIG}; minutes more)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of bnfold and of load+save per model, alternating (median)",
    )
    parser.add_argument(
        "--tools", nargs="*", help="other tools to include (default: all installed)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per tool run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write results")
    parser.add_argument("--replot", action="store_true", help="redraw the plot from OUT's JSON")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((args.out / "benchmark.json").read_text())
        plot(args.out / "benchmark.png", saved["rows"], saved.get("timeout", args.timeout))
        return
    tools = available_tools(args.tools)
    rows = []
    effects = {}
    costs: dict[str, dict] = {}
    # a tool that timed out is not run on the bigger models of the same family
    timed_out: set[tuple[str, str]] = set()
    effect_model = list(benchmark_models(True))[-1] if args.quick else EFFECT_MODEL
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        tmp = Path(tmp)
        for label, build in benchmark_models(args.quick, args.big).items():
            source = tmp / "in.onnx"
            size_mb = save_source(build(), label, source)
            baseline = None
            # bnfold and its baseline alternate, so that a slow spell of the machine weighs on
            # both alike; the other tools run once (they take minutes where bnfold takes seconds)
            paired = {tool: [] for tool in ("load+save", "bnfold")}
            for _ in range(args.repeat):
                for tool, runs in paired.items():
                    runs.append(measure(command(tool, source, tmp / f"{tool}.onnx"), args.timeout))
            for tool in tools:
                target = tmp / f"{tool}.onnx"
                family = label.split()[0]
                if (family, tool) in timed_out:
                    rows.append(_not_run(label, size_mb, tool))
                    continue
                runs = paired.get(tool) or [measure(command(tool, source, target), args.timeout)]
                seconds = statistics.median(r[0] for r in runs)
                memory = max(r[1] for r in runs)
                error = next((r[2] for r in runs if r[2]), "")
                if error.startswith("timeout"):
                    timed_out.add((family, tool))
                row = {
                    "model": label,
                    "size_mb": round(size_mb, 1),
                    "tool": tool,
                    "seconds": seconds,
                    "peak_mb": memory,
                    "error": error,
                }
                if baseline is None:
                    baseline = row
                row["time_ratio"] = seconds / baseline["seconds"]
                if tool in paired:  # the work alone, Python's start-up and imports left out
                    row["work_s"] = statistics.median(r[3] for r in runs)
                    row["work_ratio"] = row["work_s"] / baseline["work_s"]
                row["memory_ratio"] = memory / baseline["peak_mb"]
                if not error and target.exists() and tool != "load+save":
                    row.update(outcome(source, target))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if tool == "bnfold" and not error and label == effect_model:
                    effects[label] = inference_effect(source, target, runs=20)
                    runs = max(args.repeat, VALIDATION_RUNS)
                    costs[label] = validation_cost(source, tmp, runs, args.timeout * 10)
                target.unlink(missing_ok=True)
                target.with_name(target.name + ".data").unlink(missing_ok=True)
    startup = startup_cost(max(args.repeat, 5) * 4)
    print(json.dumps(startup), flush=True)
    write_report(args.out, rows, effects, args, costs, startup)


def _not_run(label: str, size_mb: float, tool: str) -> dict:
    nan = float("nan")
    return {
        "model": label,
        "size_mb": round(size_mb, 1),
        "tool": tool,
        "seconds": nan,
        "peak_mb": nan,
        "error": "not run (timed out on a smaller model)",
        "time_ratio": nan,
        "memory_ratio": nan,
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in (
        "onnx",
        "onnxruntime",
        "numpy",
        "onnxoptimizer",
        "onnxsim",
        "onnxslim",
        "onnxscript",
    ):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except Exception:
            pass
    import bnfold

    found["bnfold"] = bnfold.__version__
    return found


def write_report(folder: Path, rows, effects, args, costs=None, startup=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmark",
        "",
        f"`python benchmarks/bench.py{' --quick' * args.quick}{' --big' * args.big}` on "
        f"{platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "Whole process, file to file (bnfold: `bnfold IN -o OUT --no-validate`); load+save and "
        f"bnfold: median of {args.repeat} runs each, alternating; other tools one run, "
        f"stopped after {args.timeout:.0f} s (and then "
        "not run on the bigger models of the same family); ratios against `onnx.load` + "
        "`onnx.save` of the same file. Peak memory is the process's maximum resident set size.",
        "",
        "'work s' is the time load+save and bnfold take once Python has started and imported "
        "what they use (each process times itself); '× work' compares those. Both processes pay "
        "the start-up, about half a second on this machine (most of it `import onnx`, which loads "
        "ml_dtypes' extension): where Python starts faster, the whole-process ratio is nearer "
        "'× work'.",
        "",
        "| model | MB | tool | s | × load+save | work s | × work | peak MB | × memory "
        "| BN left | nodes left | outputs equal | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        work = f"{r['work_s']:.2f} | {r['work_ratio']:.2f}" if "work_ratio" in r else " | "
        lines.append(
            f"| {r['model']} | {r['size_mb']} | {r['tool']} | {r['seconds']:.2f} | "
            f"{r['time_ratio']:.2f} | {work} | {r['peak_mb']:.0f} | {r['memory_ratio']:.2f} | "
            f"{r.get('bn_left', '')} | {r.get('nodes_left', '')} | {r.get('equal', '')} "
            f"| {r['error']} |"
        )
    for label, effect in effects.items():
        lines += [
            "",
            f"## Inference in onnxruntime, {label}",
            "",
            "Session creation and median latency (batch 1, 20 runs), original and folded model, "
            "at `ORT_DISABLE_ALL` and the default level, on each execution provider onnxruntime "
            "has here (CUDA only where it is installed and usable).",
            "",
            "| provider / level / model | session creation s | latency ms |",
            "| --- | --- | --- |",
        ]
        for key, value in effect.items():
            if "error" in value:
                lines.append(f"| {key} | {value['error']} | |")
            else:
                lines.append(f"| {key} | {value['create_s']:.3f} | {value['latency_ms']:.2f} |")
    for label, cost in (costs or {}).items():
        lines += _cost_lines(label, cost)
    if startup:
        lines += [
            "",
            "## Start-up",
            "",
            "Whole process, median of alternating runs: `bnfold --help` and `--version` against "
            '`python -c "import click"` (what any click command pays).',
            "",
            "| process | s | × import click |",
            "| --- | --- | --- |",
            f"| import click | {startup['import click']:.3f} | 1.00 |",
        ]
        for name in ("bnfold --help", "bnfold --version"):
            lines.append(
                f"| {name} | {startup[name]:.3f} | {startup[f'{name} × import click']:.2f} |"
            )
    (folder / "benchmark.md").write_text("\n".join(lines) + "\n")
    (folder / "benchmark.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "inference": effects,
                "validation": costs,
                "startup": startup,
                "timeout": args.timeout,
            },
            indent=1,
        )
    )
    plot(folder / "benchmark.png", rows, args.timeout)


def _cost_lines(label: str, cost: dict) -> list[str]:
    lines = [
        "",
        f"## The default command, validating, {label}",
        "",
        "`bnfold IN -o OUT --providers cpu` against its floor: `onnx.load` + `onnx.save`, then "
        "one onnxruntime session per model (original, copy) run once at `ORT_DISABLE_ALL`, one "
        f"after the other. Medians of {cost['runs']} alternating runs; peak RSS.",
        "",
        "| process | s | work s | peak MB | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("floor", "bnfold"):
        r = cost[name]
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['work_s']:.2f} | {r['peak_mb']:.0f} | "
            f"{r['error']} |"
        )
    pairs = cost["pair_time_ratios"]
    lines += [
        "",
        f"× floor: time {cost['time_ratio']:.2f}, work {cost['work_ratio']:.2f}, "
        f"memory {cost['memory_ratio']:.2f}. Time ratio of each alternating pair: "
        f"{min(pairs):.2f} to {max(pairs):.2f} (median {statistics.median(pairs):.2f}).",
    ]
    return lines


def plot(path: Path, rows, timeout: float) -> None:
    """Bars of time / (load + save) per model and tool; a timed-out run is drawn hatched at its
    time limit (a lower bound), a tool not run or failing has no bar."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    model_names = list(dict.fromkeys(r["model"] for r in rows))
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    baseline = {r["model"]: r["seconds"] for r in rows if r["tool"] == "load+save"}
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(tools)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, tool in enumerate(tools):
        color = colors[i % len(colors)]
        for j, model in enumerate(model_names):
            row = next((r for r in rows if r["model"] == model and r["tool"] == tool), None)
            if row is None:
                continue
            x = j + i * width
            if not row["error"]:
                ax.bar(x, row["time_ratio"], width, color=color)
                if tool == "bnfold" and "work_ratio" in row:
                    ax.plot(x, row["work_ratio"], marker="_", markersize=14, color="black")
            elif row["error"].startswith("timeout"):
                ax.bar(x, timeout / baseline[model], width, color=color, hatch="//", alpha=0.5)
        ax.bar(np.nan, np.nan, width, color=color, label=tool)  # legend entry
    ax.bar(
        np.nan,
        np.nan,
        width,
        color="white",
        edgecolor="grey",
        hatch="//",
        label=f"timed out ({timeout:.0f} s): at least",
    )
    ax.plot(np.nan, np.nan, "_", markersize=14, color="black", label="bnfold, work only (× work)")
    ax.axhline(1.5, color="grey", linestyle="--", linewidth=1, label="target 1.5× (big models)")
    ax.axhline(2.0, color="grey", linestyle=":", linewidth=1, label="target 2× (48k-node chain)")
    labels = [name.replace(" (", "\n(").replace(", ", "\n") for name in model_names]
    ax.set_xticks(np.arange(len(model_names)) + width * (len(tools) - 1) / 2, labels)
    ax.set_ylabel("time / (onnx.load + onnx.save)")
    ax.set_yscale("log")
    ax.set_title("Folding time relative to reading and writing the model (lower is better)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
