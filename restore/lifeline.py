"""Loader processes that die with the trainer, however it ends (SIGKILL, ``os._exit``, a preemption).

DataLoader workers start from a multiprocessing fork server (``restore.data.train_loader``), and
that pair outlives a killed trainer on its own: every worker is handed the fork server's "alive"
pipe, so the fork server, which exits when that pipe closes, waits for its workers; and each
worker's watchdog watches its parent, which is the fork server, not the trainer. After a
preempted run both stayed for more than 12 minutes, holding the run's pipes and memory.

Linux's parent-death signal breaks the tie: ``die_with_parent`` asks the kernel to SIGKILL this
process when the thread that started it ends. The fork server sets it on start (it imports
``restore.lifeline_forkserver`` as its preload), so it dies with the trainer; each worker sets it
in its init, so it dies with the fork server. The kernel clears the setting on fork, which is why
both need it. Elsewhere than Linux this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(ancestor: int | None = None) -> None:
    """SIGKILL this process when its parent thread ends (Linux; a no-op on other systems).

    The kernel signals only a death that comes after the request. A worker still starting when
    the trainer was killed finds its fork server gone already and would wait forever: with
    ``ancestor``, the pid of the process this one must not outlive, it exits at once instead.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: errno {errno}")
    if ancestor is not None and not running(ancestor):
        os._exit(0)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet waited for, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"
