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


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: the run unwinds like Ctrl-C (temporary files are removed on
    the way out) and exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
