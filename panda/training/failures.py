"""A dead or frozen rank ends the job, with one line naming it, instead of hanging the job for half an hour.

What torch.distributed does by itself (measured, 2 CPU processes over gloo):

- a rank **killed** (SIGKILL, OOM killer, node loss): the survivors' next collective fails within milliseconds with
  ``Connection reset by peer [127.0.0.1]:7855`` — a C++ address, no rank — under ~100 lines of traceback;
- a rank **frozen** (SIGSTOP, a stuck kernel, a hung filesystem): the survivors wait for the process group's
  timeout, 30 minutes by default, burning every GPU of the job.

So two things are added, both on top of torch.distributed's own machinery:

1. **The collective timeout** is the process group's own timeout (``_set_pg_timeout``, what
   ``init_process_group(timeout=...)`` sets), lowered to ``collective_timeout`` once set-up is over: loading a
   13B checkpoint, building the data cache or JIT-compiling a DeepSpeed op keep the long default, training steps
   do not. gloo raises ``Timed out waiting ...`` on every waiting rank when it expires; NCCL's watchdog does the
   same (see the README's cluster-failure section for its settings).
2. **Naming the lost rank.** When a collective fails, every surviving rank runs :func:`probe_ranks` on a side gloo
   group made at set-up (CPU tensors over TCP, so it works beside NCCL too): each rank sends rank 0 a ping and
   rank 0 answers with the verdict — per rank *alive*, *gone* (its connection closed: killed or crashed) or
   *silent* (no answer within ``probe_timeout``: frozen). This is what ``torch.distributed.monitored_barrier``
   does, but that one stops at the first closed connection with only an address in the message, and tells the
   verdict to rank 0 alone.

Then each survivor prints one line (``[rank 0] rank 1 of 2 (pid 4242 on node-b) is gone ...``), kills the ranks its
process launched (Lightning's own launcher starts ranks 1..n-1 as children of rank 0: a frozen child would outlive
the job) and leaves with :data:`LOST_RANK_EXIT_CODE` through ``os._exit``: a process group with a dead peer cannot be
torn down cleanly (``destroy_process_group`` may wait on it forever), and nothing is left to save — checkpoints are
published atomically (``panda.training.checkpoint``), so ``--ckpt_path last`` resumes from the newest complete one.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

LOST_RANK_EXIT_CODE = 75  # EX_TEMPFAIL: "a temporary failure; retry" — what a requeue script tests for
_PROBE_TAG = 7341
ALIVE, GONE, SILENT = 0, 1, 2
_WORDS = {GONE: "is gone (its connection closed: killed, crashed or out of memory)",
          SILENT: "stopped answering (frozen or hung)"}


def is_collective_failure(exception: BaseException) -> bool:
    """Whether ``exception`` is a collective that failed because a peer is gone or silent (gloo or NCCL)."""
    if isinstance(exception, getattr(dist, "DistError", ())):
        return True
    if not isinstance(exception, RuntimeError):
        return False
    message = str(exception)
    return any(marker in message for marker in (
        "/gloo/", "Connection closed by peer", "Connection reset by peer", "Timed out waiting", "timeout caused pair closure",
        "NCCL error",
        "Watchdog caught collective operation timeout"))


def set_collective_timeout(seconds: float) -> None:
    """Give every process group of this process the timeout ``seconds`` (gloo and NCCL read it per collective)."""
    from torch.distributed.distributed_c10d import _set_pg_timeout, _world

    for group in list(_world.pg_map):
        _set_pg_timeout(timedelta(seconds=seconds), group)


@dataclass
class RankInfo:
    """Where a rank runs, for the message (gathered once at set-up)."""

    pid: int
    host: str


class RankProbe:
    """The side gloo group and the ranks' whereabouts; :meth:`verdict` is the probe run after a failed collective.

    Create on every rank at the same point of set-up (``new_group`` is itself a collective).
    """

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.group = dist.new_group(backend="gloo")
        infos: list = [None] * self.world_size
        dist.all_gather_object(infos, RankInfo(os.getpid(), socket.gethostname()), group=self.group)
        self.infos: list[RankInfo] = infos

    def verdict(self, timeout: float) -> list[int]:
        """``ALIVE``/``GONE``/``SILENT`` for every rank as seen through rank 0, each rank waiting at most
        ``timeout`` seconds (a rank that cannot reach rank 0 reports rank 0 and knows nothing of the others)."""
        states = torch.full((self.world_size,), ALIVE, dtype=torch.int64)
        deadline = time.monotonic() + timeout
        if self.rank != 0:
            reply = torch.zeros(self.world_size, dtype=torch.int64)
            try:
                _wait(dist.isend(torch.ones(1, dtype=torch.int64), 0, group=self.group, tag=_PROBE_TAG), deadline)
                _wait(dist.irecv(reply, 0, group=self.group, tag=_PROBE_TAG), deadline)
            except RuntimeError as error:
                states[0] = _state_of(error)
                return states.tolist()
            return reply.tolist()
        for peer in range(1, self.world_size):
            try:
                _wait(dist.irecv(torch.zeros(1, dtype=torch.int64), peer, group=self.group, tag=_PROBE_TAG),
                      deadline)
            except RuntimeError as error:
                states[peer] = _state_of(error)
        for peer in range(1, self.world_size):
            if states[peer] == ALIVE:
                try:
                    _wait(dist.isend(states.clone(), peer, group=self.group, tag=_PROBE_TAG), deadline)
                except RuntimeError:
                    pass  # it went between the two messages; its own probe will say so
        return states.tolist()

    def describe(self, states: list[int], collective_timeout: float | None, step: int) -> str:
        """One line naming the lost ranks (or saying none is lost) for the log."""
        lost = [r for r, s in enumerate(states) if s != ALIVE]
        if not lost:
            return (f"a collective failed at step {step} but every rank still answers; "
                    "see the other ranks' logs for their first error")
        parts = []
        for rank in lost:
            info = self.infos[rank]
            words = _WORDS[states[rank]]
            if states[rank] == SILENT and collective_timeout:
                words += f": no answer within the {collective_timeout:.0f} s collective timeout"
            parts.append(f"rank {rank} of {self.world_size} (pid {info.pid} on {info.host}) {words}")
        return "; ".join(parts) + f", at step {step}"


def _wait(work, deadline: float) -> None:
    remaining = max(deadline - time.monotonic(), 0.1)
    work.wait(timedelta(seconds=remaining))


def _state_of(error: RuntimeError) -> int:
    return SILENT if "timed out" in str(error).lower() or "timeout" in str(error).lower() else GONE


def newest_checkpoint(trainer) -> str | None:
    """The newest complete checkpoint ``--ckpt_path last`` would pick, for the message."""
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is None or not hasattr(callback, "_find_last_checkpoints"):
        return None
    candidates = [p for p in callback._find_last_checkpoints(trainer) if os.path.exists(p)]
    return max(candidates, key=os.path.getmtime) if candidates else None


def end_job(message: str, launcher, loggers) -> None:
    """Print ``message``, stop this process's launched ranks, flush the loggers and leave (see module docstring)."""
    print(message, file=sys.stderr, flush=True)
    if launcher is not None and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGKILL)  # Lightning's launcher: SIGKILL also ends a stopped (frozen) child
    for logger in loggers:
        try:
            logger.finalize("failed")
        except Exception:  # a logger needing the process group must not keep the job alive
            pass
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(LOST_RANK_EXIT_CODE)


def lost_rank_message(rank: int, description: str, checkpoint: str | None) -> str:
    resume = (f"newest complete checkpoint: {Path(checkpoint).name}, resume with --ckpt_path last" if checkpoint
              else "no checkpoint was written yet")
    return f"[rank {rank}] panda: error: {description}; ending the job ({resume})"


__all__ = ["LOST_RANK_EXIT_CODE", "RankProbe", "is_collective_failure", "set_collective_timeout", "end_job",
           "lost_rank_message", "newest_checkpoint"]
