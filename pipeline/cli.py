"""What every ``python -m pipeline.…`` program does with a user's mistake and with Ctrl-C.

A mistake the user can fix (a missing file, an unknown preset, a bad URL) ends the program with
one ``error: …`` line on stderr and status 2, never a traceback: the message already names the
file and the reason, and a traceback would bury it. Ctrl-C ends it with status 130, the status a
shell gives a program killed by SIGINT, after saying what is complete and how to resume.
"""

from __future__ import annotations

import sys

USAGE_ERROR = 2
INTERRUPTED = 130


def fail(message: object, status: int = USAGE_ERROR) -> int:
    """Print ``error: message`` on stderr as one line; returns ``status`` for main() to return."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"error: {text}", file=sys.stderr)
    return status


def interrupted(message: str) -> int:
    """Print ``interrupted: message`` on stderr; returns INTERRUPTED for main() to return."""
    print(f"\ninterrupted: {message}", file=sys.stderr)
    return INTERRUPTED
