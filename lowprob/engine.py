"""The one engine behind `lowprob run` and `lowprob reproduce`: planned rows (jobs) → pending → run, each result
written by the one results-file writer as soon as it exists.

A caller plans :class:`Job` s (a :class:`RowSpec` each) and supplies a function computing a job's row. The
engine reads the results file once, keeps every row in memory (so a caller can look at rows written earlier in
the same run, e.g. to choose a tuned temperature), skips jobs already done and appends each new row. Jobs can
also run as tasks on an executor (:mod:`lowprob.executors`); their rows come back to this process, still the
file's only writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lowprob.executors import Executor, Task
from lowprob.results import ResultRow, ResultsFile, RowSpec, check_writable


@dataclass(frozen=True)
class Job:
    """One planned row: its spec, its key (the spec's digest) and an optional group key — a marker row under
    the group key (e.g. "this estimator cannot run here") stands for every job of the group."""

    spec: RowSpec
    group: str | None = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.spec.digest())

    @property
    def calls(self) -> float:
        """The model calls the job's budget allows (0 without a call limit), for progress and plans."""
        return self.spec.budget.model_calls or 0


class Engine:
    """Runs jobs against one results file: checked writable and read before anything is computed."""

    def __init__(self, path: Path | str) -> None:
        self.results = ResultsFile(path)
        check_writable(self.results.path)
        self._rows = {row.key: row for row in self.results.rows()}

    @property
    def path(self) -> Path:
        return self.results.path

    @property
    def rows(self) -> Mapping[str, ResultRow]:
        """Every row of the file by key, including those written by this engine since it was opened."""
        return self._rows

    def done(self, job: Job) -> bool:
        """Whether the job's row, or a marker of its group, is in the file."""
        return job.key in self._rows or (job.group is not None and job.group in self._rows)

    def pending(self, jobs: Iterable[Job]) -> list[Job]:
        """The jobs not done yet, in order."""
        return [job for job in jobs if not self.done(job)]

    def write(self, row: ResultRow) -> None:
        """Append a row (unless its key is already there) and remember it."""
        if row.key not in self._rows:
            self.results.append(row)
            self._rows[row.key] = row

    def run(self, jobs: Iterable[Job], compute: Callable[[Job], ResultRow]) -> Iterator[tuple[Job, ResultRow]]:
        """Compute and write every job not done when its turn comes; yields each job with the row written.

        ``compute`` returns the job's row, or a marker row under the job's group key, which then stands for
        the rest of the group (those jobs are skipped).
        """
        for job in jobs:
            if self.done(job):
                continue
            row = compute(job)
            self.write(row)
            yield job, row

    def run_tasks(self, jobs: Iterable[Job], task: Callable[[Job], Task], executor: Executor
                  ) -> Iterator[tuple[Job, ResultRow]]:
        """Run each pending job as ``task(job)`` (its ``run()`` returns the row) on ``executor``; each row is
        written here as it arrives (in completion order), so the file stays exact and a killed run resumes.

        A marker row under a group key stands for its group's later rows: those are not written.
        """
        pairs = [(job, task(job)) for job in self.pending(jobs)]
        job_of = {id(t): job for job, t in pairs}  # the executor yields the very task objects it was given
        for done, row in executor.run([t for _, t in pairs]):
            job = job_of[id(done)]
            if not self.done(job):
                self.write(row)
                yield job, row
