"""Executors: where the cells of a grid run, behind one interface.

An executor has ``describe() -> str`` and ``run(jobs, report)``, which runs every
:class:`~mtlbench.run.job.CellJob` and calls ``report`` with each job's
:class:`~mtlbench.run.job.Outcome` as it completes. The runner decides which cells
need running (done cells are filtered before anything starts or is submitted); every
executor runs a cell through :func:`~mtlbench.run.job.execute_cell`, so locks,
checkpoints, logs and failure isolation are the same everywhere.

- ``local`` (default): in-process for one device slot; a pool of worker processes fed from a
  queue of device slots otherwise (mtlbench/run/local.py).
- ``slurm``: one submitit job per cell in a job array (mtlbench/run/slurm.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from mtlbench.grid.executor import ExecutorOptions
from mtlbench.run.job import CellJob, Outcome


class Executor(Protocol):
    def describe(self) -> str: ...

    def run(self, jobs: list[CellJob], report: Callable[[Outcome], None]) -> None: ...


def make_executor(options: ExecutorOptions, results: Path, echo: Callable[[str], None] = print) -> Executor:
    if options.kind == "slurm":
        from mtlbench.run.slurm import SlurmExecutor

        return SlurmExecutor(options, results, echo)
    from mtlbench.run.local import LocalExecutor

    return LocalExecutor(options, echo)
