"""Several processes converting one checkpoint, coordinated through torch.distributed (c10d).

Every process computes the same plan from the source headers. Rank 0 prepares the partial
directory (or keeps it, to resume) and broadcasts the fingerprint and the finished tensors; the
remaining tensors are dealt to the ranks by size (largest first, to the least loaded rank), each
rank writes its tensors at their planned offsets into the shared shard files and journals them;
after a barrier rank 0 writes the index, config and report and publishes. The output does not
depend on the number of processes, and a resumed run may use another number of them.

Processes come from ``torchrun`` (which sets RANK, WORLD_SIZE, MASTER_ADDR, ...; several nodes
work when they share the file system) or from ``launch`` (``--devices cuda:0,cuda:1`` or
``cpu,cpu``), which starts one process per device with the same environment. NCCL on GPUs, gloo
on CPUs; NVLink SHARP (NVLS) is kept off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch

from hlwq_kernels.checkpoint.io import cpu_count

# The slowest rank may convert for a long time before the final barrier.
TIMEOUT = timedelta(days=1)
COMMAND_ENV = "HLWQ_COMMAND"  # the user's command line, for the ranks started by ``launch``
ERROR_FILE_ENV = "HLWQ_ERROR_FILE"  # where a rank started by ``launch`` writes its ``error:`` line


class Group:
    """This process's rank in the conversion (a lone process is rank 0 of 1)."""

    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False):
        self.rank, self.world, self.owned = rank, world, owned

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj``, on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group (when this module created it)."""
        if self.owned:
            torch.distributed.destroy_process_group()


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def join(device: torch.device) -> Group:
    """Join the process group described by the environment (torchrun or ``launch``), or return a
    group of one when there is none."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Group()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Group(dist.get_rank(), dist.get_world_size(), owned=True)


def assign(sizes: list[int], world: int) -> list[list[int]]:
    """Deal items of ``sizes`` to ``world`` ranks: largest first, each to the least loaded rank
    (ties: the lower rank). Returns each rank's item indices in ascending order; deterministic."""
    loads = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        loads[r] += sizes[i]
        shares[r].append(i)
    return [sorted(s) for s in shares]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without the option ``name`` and its value (``--name V`` or ``--name=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def launch(argv: list[str], devices: list[str], command: str) -> int:
    """Run ``python -m hlwq_kernels.convert ARGV --device D`` for each of ``devices`` as the ranks of
    one process group on this machine; returns the exit status (the first failure's, 130 when
    interrupted). Signals reach every rank; when one rank fails the others are stopped. ``command``
    is the user's command line, which rank 0 names when it is interrupted. Only rank 0 writes to the
    terminal (its progress bar); the other ranks' stderr is kept aside, every rank hands its ``error:`` line
    to this launcher (``ERROR_FILE_ENV``), and the launcher prints one: that of the first failed rank (so a
    user's mistake is still one line)."""
    n = len(devices)
    cpus = cpu_count()
    env = os.environ | {
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(n),
        "LOCAL_WORLD_SIZE": str(n), "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": str(max(1, cpus // n)),
        COMMAND_ENV: command,
    }
    logs = [None] + [tempfile.TemporaryFile("w+") for _ in devices[1:]]
    errors = tempfile.mkdtemp(prefix="hlwq-ranks-")
    procs = [
        subprocess.Popen([sys.executable, "-m", "hlwq_kernels.convert", *argv, "--device", d],
                         env=env | {"RANK": str(i), "LOCAL_RANK": str(i), ERROR_FILE_ENV: os.path.join(errors, str(i))},
                         stderr=logs[i])
        for i, d in enumerate(devices)
    ]

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0, 130)]
            if failed or all(c is not None for c in codes):
                break
            time.sleep(0.05)
        if failed:  # the others may wait for the failed rank forever: stop them
            _kill(procs)
            first = next(i for i, c in enumerate(codes) if c not in (None, 0, 130))
            print(*_error_lines(errors, logs, first), sep="\n", file=sys.stderr)
            if failed[0] < 0:
                print(f"error: a worker process was killed by signal {-failed[0]}", file=sys.stderr)
                return 1
            return failed[0]
        return 130 if 130 in codes else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for log in logs[1:]:
            log.close()
        shutil.rmtree(errors, ignore_errors=True)


def _error_lines(errors: str, logs: list, first: int) -> list[str]:
    """What to print when rank ``first`` failed: its ``error:`` line, else one that another rank handed over in the
    directory ``errors``, else the last line of its kept stderr (none for rank 0, whose stderr is the terminal's)."""
    for rank in [first, *range(len(logs))]:
        try:
            with open(os.path.join(errors, str(rank))) as f:
                return f.read().splitlines()[:1]
        except OSError:
            continue
    log = logs[first]
    if log is None:
        return []
    log.seek(0)
    return [line.rstrip("\n") for line in log][-1:]


def _kill(procs: list[subprocess.Popen]) -> None:
    """Stop the ranks still running at once and silently (their journals survive a kill: a rerun resumes)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
