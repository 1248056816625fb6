"""A preempted trainer leaves nothing behind: its loader's fork server and workers die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli_restore import REPO, tiny_run
from tests.test_data import write_shards

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the Linux process table")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process, None once it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    state, ppid, start = fields[0], int(fields[1]), int(fields[19])
    return None if state in ("Z", "X") else (ppid, state, start)


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process below ``root``."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def survivors(processes: dict[int, int]) -> list[int]:
    """Those of ``processes`` still running (the same process: a reused pid has another start time)."""
    return [pid for pid, start in processes.items() if (stat := _stat(pid)) is not None and stat[2] == start]


# Dies the way a preempted job does: no cleanup, no atexit, no finally.
EXIT_AT_STEP_3 = """
import os, sys
from pipeline import typed_config
from restore import train
config = train.load_config(None, typed_config.parse_sets(sys.argv[1:]))
train.fit(config, on_step=lambda step, logs: os._exit(0) if step == 3 else None)
"""


@pytest.mark.parametrize("death", ["SIGKILL", "os._exit"])
def test_no_loader_process_outlives_a_killed_trainer(tmp_path, death):
    index = write_shards(tmp_path / "shards", shards=2, per_shard=4)
    run = tmp_path / "run"
    args = tiny_run(index, run, steps=1000, workers=2, log_every=1)
    if death == "SIGKILL":
        command = [sys.executable, "-m", "restore.train", *args]
    else:  # the same settings, through fit(), which exits at step 3
        sets = [f"shards={index}", f"out={run}", *(a for a in args[4:] if a != "--set")]
        command = [sys.executable, "-c", EXIT_AT_STEP_3, *sets]
    trainer = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    below: dict[int, int] = {}
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 240
        # Training has begun once a step is logged; by then the fork server and both workers run.
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert time.monotonic() < deadline, "training did not start"
            below.update(descendants(trainer.pid))
            if trainer.poll() is not None:
                break
            time.sleep(0.05)
        below.update(descendants(trainer.pid))
        if death == "SIGKILL":
            os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=120)
        # The fork server, two workers and multiprocessing's resource tracker.
        assert len(below) >= 3, f"expected the loader's processes below the trainer, saw {below}"
        deadline = time.monotonic() + 10
        while survivors(below) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = survivors(below)
        assert not left, "outlived the trainer: " + "; ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200] for pid in left)
    finally:
        for pid in [trainer.pid, *descendants(trainer.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in survivors(below):  # whatever a failing run left behind
            os.kill(pid, signal.SIGKILL)
