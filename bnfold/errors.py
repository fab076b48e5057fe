"""Errors bnfold reports to its users, each with the exit status the CLI uses for it.

Library code raises these instead of printing; the CLI turns them into one line on stderr and the
exit status below. Any other exception is a bug in bnfold.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VALIDATION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNFOLDED = 4
EXIT_INTERNAL = 3  # a bug in bnfold, never an answer to a user's file


class BnfoldError(Exception):
    """Base class of every error bnfold reports to its user."""

    exit_status = EXIT_BAD_INPUT


class InputError(BnfoldError):
    """The input model, the output path or an option cannot be used (exit status 2).

    The message names the file and the problem in one line.
    """

    exit_status = EXIT_BAD_INPUT

    def __init__(self, path: object, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ValidationFailed(BnfoldError):
    """The folded model did not reproduce the original's outputs (exit status 1)."""

    exit_status = EXIT_VALIDATION_FAILED


class Unfolded(BnfoldError):
    """`--strict`: some BatchNormalization was left unfolded (exit status 4)."""

    exit_status = EXIT_UNFOLDED


def failure(exc: Exception) -> tuple[int, str]:
    """The exit status and the one line a command ends with for an exception: a `BnfoldError`'s
    own, text that is not UTF-8 and graphs nested too deeply (the model's problems, exit 2),
    and anything else an internal error (a bug, exit 3)."""
    if isinstance(exc, BnfoldError):
        return exc.exit_status, f"bnfold: error: {exc}"
    if isinstance(exc, UnicodeDecodeError):  # a name protobuf could not decode: the model's text
        return (
            EXIT_BAD_INPUT,
            f"bnfold: error: the model holds text that is not valid UTF-8 ({exc})",
        )
    if isinstance(exc, RecursionError):
        return EXIT_BAD_INPUT, "bnfold: error: the model's graphs are nested too deeply to process"
    return EXIT_INTERNAL, f"bnfold: internal error: {type(exc).__name__}: {exc}"


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: the run unwinds like Ctrl-C (temporary files are removed on
    the way out) and exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
