"""The command's text view: lines built from results, printed by `bnfold.cli`.

Default view of one model: a header (file, size, opset), a line per inlined function call, one
aligned line per BatchNormalization left unfolded with its reason, a table of nodes by op type
before and after, the validation lines and a summary line. `verbose` adds a line per folded
BatchNormalization. Several models end with a table, one row per model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx

from .graphs import default_opset
from .records import Folded, FoldResult
from .validation import ValidationReport

NAME_WIDTH = 64  # names longer than this are not padded to (the columns then shift)


def header_line(source: Path, model: onnx.ModelProto, size: str) -> str:
    parts = [source.name, size, f"opset {default_opset(model)}", f"IR {model.ir_version}"]
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    if producer:
        parts.append(f"from {producer}")
    return " | ".join(parts)


def record_lines(result: FoldResult, verbose: bool) -> list[str]:
    """A line per inlined function call, then per record: only those left unfolded, unless
    `verbose`; names in one column."""
    shown = [r for r in result.records if verbose or r.kind == "skipped"]
    width = _width(_where(r) + r.batchnorm for r in shown)
    lines = [_inlined_line(call) for call in result.inlined]
    for record in shown:
        name = (_where(record) + record.batchnorm).ljust(width)
        if isinstance(record, Folded):
            into = f"into {record.into_op} '{record.into}'"
            lines.append(f"FOLDED  | {name} | {into} | {record.how}")
        else:
            lines.append(f"SKIPPED | {name} | {record.reason}")
    return lines


def _where(record) -> str:
    return f"{record.graph}/" if record.graph else ""


def _inlined_line(call) -> str:
    where = f"{call.graph}/" if call.graph else ""
    count = f"{call.batchnorms} BatchNormalization" if call.batchnorms else "calls others"
    return f"INLINED | {where}{call.call} | function {call.function} | {count}"


def op_table(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Nodes by op type, before and after, as onnxsim shows them (rows that changed marked)."""
    ops = sorted(set(before) | set(after))
    if not ops:
        return []
    width = max(len("op type"), *(len(op) for op in ops))
    lines = [f"{'op type'.ljust(width)}  before   after"]
    for op in ops:
        old, new = before.get(op, 0), after.get(op, 0)
        mark = "" if old == new else f"  ({new - old:+d})"
        lines.append(f"{op.ljust(width)}  {old:>6}  {new:>6}{mark}")
    return lines


def summary_line(
    result: FoldResult, elapsed: float, validation: ValidationReport | None, dry_run: bool
) -> str:
    parts = [
        f"folded {len(result.folded)} of {result.batchnorm_count} BatchNormalization",
        f"{result.nodes_before} → {result.nodes_after} nodes",
    ]
    if result.folded_affine or result.skipped_affine:
        left = f", {len(result.skipped_affine)} left" if result.skipped_affine else ""
        parts[0] += f" (+ {len(result.folded_affine)} BN-like arithmetic{left})"
    if result.inlined:
        calls = len(result.inlined)
        parts.insert(1, f"inlined {calls} function call{'s' if calls != 1 else ''}")
    if validation is not None:
        parts.append("validated" if validation.passed else "validation FAILED")
    if dry_run:
        parts.append("dry run: nothing written")
    parts.append(f"{elapsed:.2f} s")
    return " | ".join(parts)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows under a header, columns aligned (numbers to the right)."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        aligned = [
            cell.rjust(width) if _numeric(cell) else cell.ljust(width)
            for cell, width in zip(cells, widths, strict=True)
        ]
        return "  ".join(aligned).rstrip()

    return [line(header), *map(line, rows)]


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.replace(".", "", 1).isdigit()


def _width(names: Iterable[str]) -> int:
    return min(max((len(n) for n in names), default=0), NAME_WIDTH)


def batch_table(outcomes) -> list[str]:
    """One row per model of several (`batch.Outcome`s), then how many were written."""
    rows = [_batch_row(o) for o in outcomes]
    header = (
        "model",
        "BN folded",
        "BN left",
        "arithmetic folded",
        "validation",
        "seconds",
        "result",
    )
    lines = ["", *table(header, rows)]
    written = sum(1 for o in outcomes if o.report and o.report.get("written"))
    failed = sum(1 for o in outcomes if o.status)
    lines.append(f"{len(outcomes)} models: {written} written, {failed} failed")
    return lines


def _batch_row(outcome) -> list[str]:
    report = outcome.report
    result = _result_text(outcome)
    if report is None:
        return [outcome.label, "-", "-", "-", "-", "-", result]
    validation = report.get("validation")
    checked = "not run" if validation is None else "passed" if validation["passed"] else "FAILED"
    return [
        outcome.label,
        str(report["batchnorm_folded"]),
        str(report["batchnorm_total"] - report["batchnorm_folded"]),
        str(len(report["folded_affine"])),
        checked,
        f"{report['seconds']:.2f}",
        result,
    ]


def _result_text(outcome) -> str:
    if outcome.status == 0:
        written = outcome.report is not None and outcome.report.get("written")
        return "written" if written else "ok (dry run)"
    reason = outcome.message
    for prefix in ("bnfold: internal error: ", "bnfold: error: ", f"{outcome.label}: "):
        reason = reason.removeprefix(prefix)
    reason = reason if len(reason) <= 60 else reason[:57] + "..."
    return f"exit {outcome.status}: {reason}"
