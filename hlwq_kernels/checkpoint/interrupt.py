"""Ctrl-C and SIGTERM on the command line: stop, keep what is saved, say how to resume."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

from hlwq_kernels.checkpoint import progress
from hlwq_kernels.checkpoint.distributed import COMMAND_ENV

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def install_handlers() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt once; later ones are ignored, so a second Ctrl-C
    (or a signal forwarded to every rank) cannot cut short the saving of what is finished."""

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def resume_command(argv: list[str]) -> str:
    """The command that resumes this conversion."""
    if COMMAND_ENV in os.environ:
        return os.environ[COMMAND_ENV]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "the same torchrun command"
    return shlex.join(["python", "-m", "hlwq_kernels.convert", *argv])


def message(dst: str | os.PathLike, argv: list[str]) -> str:
    """The one line printed when the conversion to ``dst`` is interrupted."""
    work = progress.partial_dir(Path(dst).expanduser().resolve())
    saved = progress.saved(work)
    if saved is None:
        return f"interrupted before anything was saved; to start again: {resume_command(argv)}"
    done, total, done_bytes, total_bytes = saved
    return (f"interrupted: {done} of {total} tensors ({done_bytes / 1e9:.2f} of {total_bytes / 1e9:.2f} GB of the "
            f"source) saved in {work}; resume with: {resume_command(argv)}")
