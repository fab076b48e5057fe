"""The command's console: where its lines go (stdout, stderr, or kept for a worker's model) and
the progress line on a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

import click

from . import view
from .naming import printable
from .pipeline import size_text
from .records import FoldResult
from .reporting import Reporter
from .validation import ValidationReport

# How many --json documents this process has printed (the command prints an error document
# where it ends before printing one: `cli.main`).
documents_printed = 0


class Console(Reporter):
    """Where lines go: the view (`bnfold.view`) and verdicts to stdout (to stderr with --json,
    whose document is stdout), warnings, progress and errors to stderr. Commentary never stops a
    run: a closed or full stdout (`| head -1`, `> /dev/full`) is let go, and the model is still
    written."""

    def __init__(
        self, quiet: bool, verbose: bool, as_json: bool = False, keep: bool = False
    ) -> None:
        """`keep`: hold the lines in `kept` as (text, to stderr) instead of printing them (a
        worker's, printed by the command with `replay`)."""
        self.quiet = quiet
        self.verbose = verbose
        self.to_stderr = as_json
        self.stdout_gone = False
        self.keep = keep
        self.kept: list[tuple[str, bool]] = []
        on_terminal = not quiet and not keep and sys.stderr.isatty()
        self.ticker = Ticker() if on_terminal else None

    def out(self, line: str) -> None:
        if not self.quiet:
            self._echo(printable(line), err=True if line.startswith("WARNING") else None)

    def out_lines(self, lines) -> None:
        """Many lines in one write (one `echo` per line costs ~15 µs: 0.25 s on 16,000 records)."""
        if not self.quiet:
            text = "\n".join(printable(line) for line in lines)
            if text:
                self._echo(text)

    def detail(self, line: str) -> None:
        if self.verbose and not self.quiet:
            self._echo(printable(line))

    def loaded(self, source: Path, model, size: int) -> None:
        self.out(view.header_line(source, model, size_text(size)))

    def folded(self, result: FoldResult) -> None:
        self.out_lines(view.record_lines(result, self.verbose))
        self.out_lines(view.op_table(result.ops_before, result.ops_after))

    def validated(self, report: ValidationReport) -> None:
        for line in report.lines(verbose=self.verbose):
            self.out(line)

    def document(self, text: str) -> None:
        """The one thing --json puts on stdout."""
        global documents_printed
        documents_printed += 1
        self._echo(text, err=False)

    def error(self, line: str) -> None:
        """A model's one-line error, among several models' lines."""
        self._echo(printable(line), err=True)

    def replay(self, lines: list[tuple[str, bool]]) -> None:
        """Print lines another console kept."""
        for text, to_stderr in lines:
            self._echo(text, err=to_stderr)

    def progress(self, line: str) -> None:
        if self.ticker is not None:
            self.ticker.start(line)

    def progress_done(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()

    def _echo(self, text: str, err: bool | None = None) -> None:
        to_stderr = self.to_stderr if err is None else err
        if self.keep:
            self.kept.append((text, to_stderr))
            return
        if self.stdout_gone and not to_stderr:
            return
        try:
            click.echo(text, err=to_stderr)
        except OSError:  # a reader that went away (EPIPE), a full device (ENOSPC), ...
            if to_stderr:
                return
            self.stdout_gone = True
            _silence_stdout()


class Ticker:
    """The phase on a terminal's last line, with the seconds it has taken, updated every
    second by a thread of its own (validation of a big model takes minutes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._began = 0.0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, phase: str) -> None:
        with self._lock:
            self._phase, self._began = phase, time.perf_counter()
            self._draw()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bnfold-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._phase is not None:
                self._phase = None
                self._write("\r\033[K")

    def _run(self) -> None:
        while not self._wake.wait(1.0):
            with self._lock:
                if self._phase is not None:
                    self._draw()

    def _draw(self) -> None:
        seconds = time.perf_counter() - self._began
        self._write(f"\r\033[K{self._phase} ({seconds:.0f} s)")

    @staticmethod
    def _write(text: str) -> None:
        with contextlib.suppress(OSError):
            click.echo(text, err=True, nl=False)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that what Python still holds for stdout (and
    flushes at exit) goes nowhere instead of failing again."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
