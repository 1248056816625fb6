"""What every ``python -m pipeline.…`` program does with a user's mistake and with Ctrl-C.

A mistake the user can fix (a missing file, an unknown preset, a bad URL) ends the program with
one ``error: …`` line on stderr and status 2, never a traceback: the message already names the
file and the reason, and a traceback would bury it. Ctrl-C ends it with status 130, the status a
shell gives a program killed by SIGINT, after saying what is complete and how to resume.
"""

from __future__ import annotations

import re
import sys

USAGE_ERROR = 2
INTERRUPTED = 130


# torch re-raises a DataLoader worker's exception with the worker's traceback inside its message.
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _without_worker_traceback(text: str) -> str:
    """The original message of an error a DataLoader worker raised: what follows ``module.Error: ``
    on the first unindented line after the traceback's last frame."""
    if WORKER_TRACEBACK not in text:
        return text
    lines = text.split(WORKER_TRACEBACK, 1)[1].splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = next((i for i in range(frames[-1] + 1 if frames else 0, len(lines))
                  if re.match(r"[\w.]+: ", lines[i])), None)
    if start is None:
        return text
    return "\n".join([lines[start].split(": ", 1)[1], *lines[start + 1:]])


def fail(message: object, status: int = USAGE_ERROR) -> int:
    """Print ``error: message`` on stderr as one line; returns ``status`` for main() to return."""
    text = _without_worker_traceback(str(message))
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    print(f"error: {text}", file=sys.stderr)
    return status


def interrupted(message: str) -> int:
    """Print ``interrupted: message`` on stderr; returns INTERRUPTED for main() to return."""
    print(f"\ninterrupted: {message}", file=sys.stderr)
    return INTERRUPTED
