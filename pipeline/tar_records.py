"""webdataset records read from uncompressed tar streams, one pass, no seeking.

A record is what webdataset groups: the consecutive members that share a key (the member's path
up to the first dot of its file name), as ``{"__key__": key, "__url__": url, suffix: bytes, ...}``
with suffixes lowercased and ``__*__`` metadata members skipped. Any stream ``webdataset.gopen``
opens works (local files, ``pipe:``, http), in the tar dialects Python writes: ustar, GNU (long
names) and pax (long names, large sizes).

Why not ``tarfile``: its stream mode builds a TarInfo, a file object and a small buffer for every
member, which a training loader pays on every sample. Reading a demo shard's 4-member records
took 0.25 ms a record through webdataset's reader and 0.19 through ``tarfile``'s random access,
against 0.05 here (bench/RESULTS.md), out of the ~2 ms a loader worker spends on a 64² crop.
Headers are still checked (checksum, numeric fields, pax records), and a damaged or truncated tar
is an error that names it and the byte offset, where ``tarfile`` would end the archive early
without a word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from webdataset.gopen import Pipe, gopen

BLOCK = 512
# A prior sample's largest member is a PNG under image_files.MAX_PIXELS (64 MP, ~200 MB raw);
# 512 MiB leaves room for it and refuses members that could only be there to exhaust memory.
MAX_MEMBER_BYTES = 512 * 1024 * 1024
REGULAR = (b"0", b"\0", b"7")
# Members whose size field describes no data in the archive (tarfile skips none for them).
NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")
GNU_LONG_NAME = b"L"
GNU_SPARSE = b"S"
PAX_HEADER = b"x"
POSIX_MAGIC = b"ustar\x0000"
# A member webdataset leaves out of every record (e.g. "__index__").
META_NAME = re.compile(r"__[^/]*__($|/)")


class TarStreamError(ValueError):
    """A tar stream that cannot be read further; names the tar and, when known, the byte offset."""

    def __init__(self, url: str, offset: int | None, reason: str):
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{url}: tar unreadable{where}: {reason}")
        self.url, self.offset, self.reason = url, offset, reason


def _number(field: bytes, url: str, offset: int) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256, for values beyond the octal field
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarStreamError(url, offset, f"bad numeric header field {field!r}") from None


def _checksum_ok(header: bytes, expected: int) -> bool:
    # The sum counts the checksum field itself as eight spaces; some old writers summed signed
    # bytes, which tarfile accepts too.
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if unsigned == expected:
        return True
    return unsigned - 256 * sum(b >= 128 for b in header[:148] + header[156:]) == expected


def _pax_fields(data: bytes, url: str, offset: int) -> dict[str, str]:
    """The "length key=value\\n" records of a pax extended header."""
    fields, at = {}, 0
    while at < len(data) and data[at:at + 1] != b"\0":
        space = data.find(b" ", at)
        try:
            length = int(data[at:space])
        except ValueError:
            length = 0
        # A record holds at least its length, the space, "k=" and the newline; anything else would
        # stop the walk (a zero length) or run past the header.
        if space < 0 or length < space - at + 4 or at + length > len(data) or data[at + length - 1] != 0x0A:
            raise TarStreamError(url, offset, "malformed pax header record")
        key, _, value = data[space + 1:at + length - 1].partition(b"=")
        fields[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        at += length
    return fields


def stream_members(stream: IO[bytes], url: str) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular member of an uncompressed tar, in order; other members
    (directories, links) are passed over. Raises TarStreamError on an empty, damaged or truncated
    tar."""
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}

    def read(size: int) -> bytes:
        data = stream.read(size)
        if len(data) != size:
            raise TarStreamError(url, offset + len(data), f"truncated: {size} bytes expected, {len(data)} left")
        return data

    while True:
        header = stream.read(BLOCK)
        if offset == 0 and not header:
            raise TarStreamError(url, 0, "empty file")
        if not header.strip(b"\0"):
            return  # end of archive: zero blocks (perhaps cut short), or nothing after a member
        if len(header) != BLOCK:
            raise TarStreamError(url, offset, f"truncated header ({len(header)} of {BLOCK} bytes)")
        if not _checksum_ok(header, _number(header[148:156], url, offset)):
            raise TarStreamError(url, offset, "header checksum mismatch (not a tar, or damaged)")
        kind = header[156:157]
        if kind == GNU_SPARSE:
            raise TarStreamError(url, offset, "GNU sparse members are not supported")
        size = 0 if kind in NO_DATA else _number(header[124:136], url, offset)
        if kind in REGULAR and "size" in pax:
            size = int(pax["size"])
        if not 0 <= size <= MAX_MEMBER_BYTES:  # a damaged or hostile size field: never allocate it
            raise TarStreamError(url, offset, f"member size {size} is outside 0..{MAX_MEMBER_BYTES}")
        offset += BLOCK
        padded = size + -size % BLOCK
        if kind == GNU_LONG_NAME:
            long_name = read(padded)[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == PAX_HEADER:
            pax = _pax_fields(read(padded)[:size], url, offset)
        elif kind in REGULAR:
            name = long_name or pax.get("path")
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:265] == POSIX_MAGIC else b""
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            data = read(padded)
            yield name, data[:size] if padded != size else data
            long_name, pax = None, {}
        else:
            read(padded)
            long_name, pax = None, {}
        offset += padded


def split_key(path: str) -> tuple[str, str] | None:
    """webdataset's (key, suffix) of a member path: the key ends at the first dot of the file
    name; None for a member of no record (a name without a dot, a hidden file, metadata)."""
    if META_NAME.match(path):
        return None
    head, slash, base = path.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot or not stem:
        return None
    return head + slash + stem, suffix.lower()


def tar_records(stream: IO[bytes], url: str) -> Iterator[dict[str, Any]]:
    """The records of one tar stream, in order. A member repeated within a record is an error."""
    record: dict[str, Any] | None = None
    for path, data in stream_members(stream, url):
        parts = split_key(path)
        if parts is None:
            continue
        key, suffix = parts
        if record is None or record["__key__"] != key:
            if record is not None:
                yield record
            record = {"__key__": key, "__url__": url}
        if suffix in record:
            raise TarStreamError(url, None, f"{path}: member {suffix!r} of {key!r} appears twice")
        record[suffix] = data
    if record is not None:
        yield record


def _close(opened: IO[bytes]) -> str | None:
    """Close a source; for a ``pipe:`` source, what its command's failure says (None if none)."""
    try:
        opened.close()
    except OSError as e:
        return str(e)
    return None


def url_records(urls: Iterable[str], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """The records of each tar in turn. A tar that cannot be opened or read to its end (for a
    ``pipe:`` source, also one whose command fails) goes to ``handler``: its records before the
    damage were yielded, the one being read is lost with the rest of the tar. The handler
    returning True moves on to the next tar, False stops."""
    for url in urls:
        opened = None
        try:
            opened = gopen(url)
            # webdataset's Pipe (``pipe:``, and http(s) through curl) raises from a read once its
            # command has exited with an error, dropping what is still in the pipe: read the pipe
            # itself, and take the exit status when it is closed, after the data.
            stream = opened.stream if isinstance(opened, Pipe) else opened
            yield from tar_records(stream, url)
            # Past the end-of-archive blocks there is only padding: read it, so that a pipe's
            # writer finishes and its exit status tells whether the download worked.
            while stream.read(1 << 16):
                pass
            opened, done = None, opened
            done.close()
        except GeneratorExit:
            # The reader of these records stopped (an epoch's end, a limit): a pipe's command then
            # exits on a broken pipe, which says nothing about the data.
            if opened is not None:
                _close(opened)
            raise
        except (OSError, ValueError) as e:
            failed = _close(opened) if opened is not None else None
            if not isinstance(e, TarStreamError):
                e = TarStreamError(url, None, f"{type(e).__name__}: {e}")
            if failed:  # often the cause: a download that failed shows as a short or empty tar
                e = TarStreamError(url, e.offset, f"{e.reason}; the source failed: {failed}")
            if not handler(e):
                return
