"""Running a function in a few real ``torch.distributed`` processes from a test, with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``init_method=tcp://...``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable[..., Any], args: tuple[Any, ...], nprocs: int = 2, deadline_s: float = 180.0) -> None:
    """``fn(rank, *args)`` in ``nprocs`` spawned processes; fails the test if they are not done in time.

    A worker's exception is re-raised here with its traceback. A hang (a collective that one
    rank never enters) ends in ``pytest.fail`` after ``deadline_s`` (the processes are killed);
    give the process group a shorter ``timeout`` so a rank blocked in a collective raises first.
    """
    import torch.multiprocessing as mp

    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    end = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > end:
                pytest.fail(
                    f"{nprocs} processes running {fn.__name__} did not finish in {deadline_s:.0f} s (deadlock?)"
                )
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
