"""Processes: this process's place among those ``torchrun`` started, its share of the jobs, its device, and
the same float operations in every process (the format and the rules: :mod:`infd_solve.batch`)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import checks
from .jobs import Job

DEFAULT_THREADS = 1


def split_jobs(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """The jobs of process ``rank`` of ``world_size``: every ``world_size``-th one in file order, from
    ``rank`` (deterministic, and neighbouring jobs, often alike in cost, go to different processes)."""
    world_size = checks.integer(world_size, "world_size", 1)
    rank = checks.integer(rank, "rank", 0, world_size - 1)
    return list(jobs[rank::world_size])


@dataclass
class Processes:
    """Where this process stands among those ``torchrun`` started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:  # the process group is torn down however the run ends
        self.close()


def interrupt_on_sigterm() -> None:
    """Make SIGTERM, which torchrun and job schedulers send to stop workers, end the process as Ctrl-C does
    (``KeyboardInterrupt``: temporary files removed, every written file complete). For scripts' main."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def launch(timeout_days: float = 7.0) -> Processes:
    """This process's place, from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``), to use as ``with launch() as processes:``; with several, a gloo process group (used only
    to wait for each other at the end, on CPUs and GPUs alike; the long timeout lets one rank wait for
    another's last job)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=timeout_days))
    return Processes(rank, world_size, local_rank)


def process_device(device, processes: Processes):
    """The device of this process: ``device`` if given (``"cuda"`` with several processes: one GPU per local
    rank), else the local rank's GPU when there are GPUs, else the CPU."""
    if device is None or str(device) == "cuda":
        if torch.cuda.is_available():
            return torch.device("cuda", processes.local_rank % torch.cuda.device_count())
        if device is None:
            return torch.device("cpu")
    return device


def set_determinism(threads: int = DEFAULT_THREADS) -> None:
    """The same float operations in every process: a fixed number of torch threads, deterministic cuDNN."""
    torch.set_num_threads(checks.integer(threads, "threads", 1, 1024))
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
