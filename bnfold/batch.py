"""Many models in one command: `bnfold A.onnx B.onnx ... -o OUTDIR`, `bnfold DIR -o OUTDIR`.

`find_jobs` turns the inputs into one job per model file (every `*.onnx` of a folder, sub-folders
too with `recursive`, their layout kept under OUTDIR), checked before any work: two inputs that
would write the same output, an output that is an input, an output folder that is an input
folder or lies inside one that `recursive` searches, an input folder without models are usage
errors. `run_jobs` runs a function on each job, in this process or in `workers`
processes, and yields the outcomes in the jobs' order as they become available: one model that
fails never stops the others. `worst_status` is the command's exit status.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EXIT_INTERNAL, InputError, Terminated

# Exit statuses of single models, from least to most severe: the batch exits with the worst.
SEVERITY = (0, 4, 1, 2, 3)


@dataclass(frozen=True)
class Job:
    """One model: where it is read, where it goes (None: a dry run), how it is named (`label`:
    as given; `name`: its path under the output folder)."""

    source: Path
    target: Path | None
    label: str
    name: Path


@dataclass
class Outcome:
    """What one model's run came to: its exit status, as a command of its own would have it, the
    one-line error (if any), its report (`FileResult.to_dict()`; None if it never got that
    far) and the lines it printed, as (text, to stderr)."""

    label: str
    status: int
    message: str = ""
    report: dict | None = None
    lines: list[tuple[str, bool]] = field(default_factory=list)


def is_batch(inputs: Sequence[Path]) -> bool:
    """Several inputs, or a folder: the output is a folder."""
    return len(inputs) > 1 or any(path.is_dir() for path in inputs)


def find_jobs(inputs: Sequence[Path], out_dir: Path | None, recursive: bool) -> list[Job]:
    """One job per model file of `inputs` (files, and folders' `*.onnx`), in the order given
    (a folder's sorted); each writes `out_dir`/its name (or its path inside its folder)."""
    jobs: list[Job] = []
    for path in inputs:
        if path.is_dir():
            jobs.extend(_folder_jobs(path, out_dir, recursive))
        elif path.exists():
            target = None if out_dir is None else out_dir / path.name
            jobs.append(Job(path, target, str(path), Path(path.name)))
        else:
            raise InputError(path, "no such file or folder")
    _check_distinct(jobs)
    return jobs


def _folder_jobs(folder: Path, out_dir: Path | None, recursive: bool) -> list[Job]:
    if out_dir is not None and out_dir.resolve() == folder.resolve():
        raise InputError(out_dir, "is the input folder: the outputs would replace the inputs")
    if recursive and out_dir is not None and folder.resolve() in out_dir.resolve().parents:
        raise InputError(
            out_dir,
            f"is inside the input folder {folder}, which -r searches: its models would be read "
            "as inputs and replaced; give an output folder outside it",
        )
    found = sorted(folder.rglob("*.onnx") if recursive else folder.glob("*.onnx"))
    files = [path for path in found if path.is_file()]
    if not files:
        depth = " or its sub-folders" if recursive else " (-r also looks in sub-folders)"
        raise InputError(folder, f"holds no *.onnx file{depth}")
    jobs = []
    for path in files:
        relative = path.relative_to(folder)
        target = None if out_dir is None else out_dir / relative
        jobs.append(Job(path, target, str(path), relative))
    return jobs


def _check_distinct(jobs: list[Job]) -> None:
    """No two jobs may read the same model or write the same output (or keep their inputs and
    outputs in the same place, also in a dry run)."""
    sources: dict[Path, Job] = {}
    names: dict[Path, Job] = {}
    read = {job.source.resolve() for job in jobs}
    for job in jobs:
        if job.target is not None and job.target.resolve() in read:
            raise InputError(job.target, "is one of the input models: it would be replaced")
        if job.source.resolve() in sources:
            raise InputError(job.source, "is given twice")
        other = names.get(job.name)
        if other is not None:
            raise InputError(
                job.source,
                f"and {other.source} would both be written as {job.name}; "
                "fold them in separate commands",
            )
        sources[job.source.resolve()] = names[job.name] = job


def run_jobs(
    jobs: Sequence[Job], run_one: Callable[[Job], Outcome], workers: int
) -> Iterator[Outcome]:
    """`run_one(job)` for every job, in the jobs' order; with `workers` > 1 in as many worker
    processes (a fresh interpreter each: onnxruntime's threads do not survive a fork). A worker
    that dies (killed for memory, a crash in a provider) costs only its own model: the models
    it had not finished are run again, one worker at a time, so that a second death names the
    model that causes it (exit status 3 for that one). An interrupt stops the workers (each
    removes its temporary files and exits) and goes on up."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_one(job)
        return
    runner = _Runner(run_one, min(workers, len(jobs)))
    try:
        futures = [runner.submit(job) for job in jobs]
        for position in range(len(jobs)):
            yield runner.result(futures, jobs, position)
    except BaseException:
        runner.stop()
        raise
    runner.close()


class _Runner:
    """A process pool that is replaced by a one-worker pool when a worker dies."""

    def __init__(self, run_one: Callable[[Job], Outcome], workers: int) -> None:
        self.run_one = run_one
        self.context = multiprocessing.get_context("spawn")
        self.pool = self._pool(workers)
        self.careful = False  # one worker at a time, after a death

    def _pool(self, workers: int) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=self.context, initializer=_worker_started
        )

    def submit(self, job: Job) -> concurrent.futures.Future:
        return self.pool.submit(_in_worker, self.run_one, job)

    def result(self, futures: list, jobs: Sequence[Job], position: int) -> Outcome:
        """Job `position`'s outcome; after a worker's death, the models not finished (this one
        and those after it) run again in a one-worker pool."""
        try:
            return futures[position].result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            if self.careful:  # this model's own worker died
                self._restart(futures, jobs, position + 1)
                message = f"bnfold: internal error: {_died(exc)}"
                return Outcome(jobs[position].label, EXIT_INTERNAL, message)
            self.careful = True
            self._restart(futures, jobs, position)
            return self.result(futures, jobs, position)

    def _restart(self, futures: list, jobs: Sequence[Job], start: int) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self._pool(1)
        for position in range(start, len(jobs)):
            done = futures[position].done() and not futures[position].cancelled()
            if not (done and futures[position].exception() is None):  # (finished: kept)
                futures[position] = self.submit(jobs[position])

    def stop(self) -> None:
        _stop(self.pool)

    def close(self) -> None:
        self.pool.shutdown()


def _died(exc: BaseException) -> str:
    return f"the worker process folding it died ({exc})"


def _in_worker(run_one: Callable[[Job], Outcome], job: Job) -> Outcome:
    """`run_one(job)` in a worker; an interrupt ends the worker once it has cleaned up (it must
    not go on to a model still queued for it)."""
    try:
        return run_one(job)
    except Terminated as exc:
        os._exit(128 + exc.signum)


def _worker_started() -> None:
    """A worker leaves Ctrl-C to the command, which stops it with SIGTERM (raised there as an
    interrupt, so that its temporary files are removed on the way out)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def terminated(signum, frame):
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, terminated)


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    processes = (
        multiprocessing.active_children()
    )  # (the pool's workers: this process has no others)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=30)


def worst_status(statuses: Sequence[int]) -> int:
    """The most severe exit status (internal error, bad input, validation failed, strict)."""
    return max(statuses, key=_severity, default=0)


def _severity(status: int) -> int:
    return SEVERITY.index(status) if status in SEVERITY else len(SEVERITY)
