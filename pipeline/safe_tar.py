"""Checking a shard's tar structure before anything reads it.

A shard that matches its manifest's sha256 is exactly what the publisher made, which is not the
same as harmless: a tar can carry absolute paths, ``..`` members, links, device nodes or a
multi-gigabyte member. lmdir's readers never extract tars to disk, but tools people point at the
same files do, so a shard is only admitted when every member is a plain regular file with a
relative, plain name and a bounded size.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.tar_records import MAX_MEMBER_BYTES, split_key

MAX_MEMBERS = 1_000_000
MAX_NAME_LENGTH = 255


class UnsafeTarError(ValueError):
    """A shard refused by check_tar; names the shard, the member (if any) and the reason."""

    def __init__(self, shard: str, member: str, reason: str):
        where = f"member {member!r}: " if member else ""
        super().__init__(f"shard {shard}: {where}{reason}")
        self.shard = shard
        self.member = member
        self.reason = reason


@dataclass(frozen=True)
class TarSummary:
    """What a checked shard holds; ``samples`` counts distinct webdataset keys."""

    members: int
    member_bytes: int
    samples: int


def member_problem(info: tarfile.TarInfo, max_member_bytes: int = MAX_MEMBER_BYTES) -> str | None:
    """Why ``info`` may not be in a shard, or None when it is a plain, bounded, regular file."""
    name = info.name
    if not name:
        return "empty member name"
    if len(name) > MAX_NAME_LENGTH:
        return f"name of {len(name)} characters exceeds {MAX_NAME_LENGTH}"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "name contains control characters"
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "absolute path (or a Windows drive or separator)"
    if ".." in PurePosixPath(name).parts:
        return "path contains '..'"
    if info.issym() or info.islnk():
        return f"link to {info.linkname!r}; links are not allowed"
    if info.ischr() or info.isblk():
        return "device node"
    if info.isfifo():
        return "fifo"
    if info.isdir():
        return "directory entry; shards hold regular files only"
    if not info.isfile() or info.issparse():
        return f"not a regular file (tar type {info.type!r})"
    if info.size > max_member_bytes:
        return f"{info.size} bytes exceeds the limit of {max_member_bytes} per member"
    return None


def check_tar(path: str | Path, shard: str | None = None,
              max_member_bytes: int = MAX_MEMBER_BYTES, max_members: int = MAX_MEMBERS) -> TarSummary:
    """Read every member header of an uncompressed tar and raise UnsafeTarError at the first bad one.

    ``shard`` is the name used in errors (the file name by default). Only headers are read:
    member data is skipped, so checking a shard costs little more than listing it.
    """
    shard = shard or Path(path).name
    members = 0
    total = 0
    keys: set[str] = set()
    try:
        # "r:" and not "r:*": shards are plain tars, and a compressed one would hide its members'
        # true sizes behind a decompression step.
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                problem = member_problem(info, max_member_bytes)
                if problem:
                    raise UnsafeTarError(shard, info.name, problem)
                members += 1
                total += info.size
                # The samples a reader makes of it: a member without a suffix is in none.
                key = split_key(info.name)
                if key is not None:
                    keys.add(key[0])
                if members > max_members:
                    raise UnsafeTarError(shard, "", f"more than {max_members} members")
    except tarfile.TarError as e:
        raise UnsafeTarError(shard, "", f"not a readable uncompressed tar: {e}") from e
    except OSError as e:
        raise UnsafeTarError(shard, "", f"cannot read: {e}") from e
    return TarSummary(members=members, member_bytes=total, samples=len(keys))
