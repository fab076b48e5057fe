"""`Reporter`: what a caller of `fold_file` is told while it runs (the command prints it). A
module of its own, free of heavy imports: the command defines its console on it before it has
loaded onnx."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from .records import FoldResult
    from .validation import ValidationReport


class Reporter:
    """What a caller is told while `fold_file` runs (the command prints it); does nothing."""

    def progress(self, text: str) -> None:
        """A phase begins (`loading ...`, `folding`, `validating ...`, `saving ...`)."""

    def progress_done(self) -> None:
        """The phase ended."""

    def detail(self, text: str) -> None:
        """A timing or a decision, for the curious."""

    def loaded(self, source: Path, model: onnx.ModelProto, size: int) -> None:
        """The input is read (`size`: bytes of its file and data files); not yet folded."""

    def folded(self, result: FoldResult) -> None:
        """The fold is done: its records."""

    def validated(self, report: ValidationReport) -> None:
        """Validation is done: its verdict."""
