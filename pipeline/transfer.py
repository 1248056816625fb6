"""Moving bytes from one URL into a local ``.part`` file, per scheme, resumably.

http(s) goes through requests with a Range request from the part file's current size; every
other allowed scheme (file, hf, s3, gs, ...) goes through fsspec, which opens the remote file and
seeks to the same offset (hf is huggingface_hub's HfFileSystem, registered with fsspec by
huggingface_hub). Either way the part file never grows past the size the manifest promises.
Verification and the choice of mirror belong to pipeline.download; this module only moves bytes
and says whether a failure is worth retrying.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3

CHUNK = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# Statuses where the same URL may work a moment later; anything else moves on to the next mirror.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class TransferError(Exception):
    """A transfer that did not complete; ``retry`` says whether the same URL is worth another try."""

    def __init__(self, url: str, reason: str, retry: bool):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.retry = retry


def is_http(url: str) -> bool:
    """Whether the URL is fetched with requests (http, https) rather than through fsspec."""
    return url.startswith(("http://", "https://"))


def fetch_into(url: str, part: Path, expected_bytes: int, timeout: float,
               on_bytes: Callable[[int], None], session: requests.Session | None = None) -> None:
    """Append the rest of ``url`` to ``part`` until it holds exactly ``expected_bytes`` bytes.

    Resumes from the part file's current size. ``on_bytes(n)`` is told of every change in the
    part file's size (negative when it is restarted from zero). Raises TransferError; the part
    file keeps whatever arrived, so the next call resumes from there.
    """
    offset = part.stat().st_size if part.exists() else 0
    if offset > expected_bytes:
        # Longer than the whole file can be: it is not a prefix of it.
        part.unlink()
        on_bytes(-offset)
        offset = 0
    if offset == expected_bytes:
        return
    if is_http(url):
        _http_into(url, part, offset, expected_bytes, timeout, on_bytes, session or requests.Session())
    else:
        _fsspec_into(url, part, offset, expected_bytes, on_bytes)


def _http_into(url: str, part: Path, offset: int, expected: int, timeout: float,
               on_bytes: Callable[[int], None], session: requests.Session) -> None:
    # identity: offsets and the sha256 are over the stored bytes, not a re-encoded stream.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            start = _http_start(url, response, offset, expected)
            if start == 0 and offset:
                # The server ignored the Range request and sends the whole file.
                on_bytes(-offset)
            with open(part, "r+b" if start else "wb") as out:
                out.seek(start)
                out.truncate()
                _copy(url, response.raw.stream(CHUNK, decode_content=False), out, expected - start, on_bytes)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
        raise TransferError(url, f"connection failed: {e}", retry=True) from e
    except OSError as e:
        raise TransferError(url, f"cannot write {part}: {e}", retry=False) from e


def _http_start(url: str, response: requests.Response, offset: int, expected: int) -> int:
    """The offset the response body starts at, after checking it describes the expected file."""
    status = response.status_code
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise TransferError(url, f"asked for bytes {offset}- and got Content-Range "
                                     f"{response.headers.get('Content-Range')!r}", retry=True)
        total = match.group(3)
        if total != "*" and int(total) != expected:
            raise TransferError(url, f"file is {total} bytes, the manifest says {expected}", retry=False)
        return offset
    if status == 200:
        length = response.headers.get("Content-Length")
        if length is not None and int(length) != expected:
            raise TransferError(url, f"file is {length} bytes, the manifest says {expected}", retry=False)
        return 0
    if status == 416:
        raise TransferError(url, f"range {offset}- not satisfiable (HTTP 416)", retry=True)
    raise TransferError(url, f"HTTP {status} {response.reason}", retry=status in _RETRY_STATUSES)


def _fsspec_into(url: str, part: Path, offset: int, expected: int, on_bytes: Callable[[int], None]) -> None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        # fsspec names the package that provides the protocol (s3fs, gcsfs, ...).
        raise TransferError(url, f"cannot open this scheme here: {e}", retry=False) from e
    try:
        size = fs.size(path)
        if size != expected:
            raise TransferError(url, f"file is {size} bytes, the manifest says {expected}", retry=False)
        with fs.open(path, "rb") as src, open(part, "ab") as out:
            src.seek(offset)
            _copy(url, iter(lambda: src.read(CHUNK), b""), out, expected - offset, on_bytes)
    except FileNotFoundError as e:
        raise TransferError(url, "not found", retry=False) from e
    except PermissionError as e:
        raise TransferError(url, f"permission denied: {e}", retry=False) from e
    except OSError as e:
        raise TransferError(url, f"read failed: {e}", retry=True) from e


def _copy(url: str, chunks: Iterable[bytes], out: BinaryIO, limit: int, on_bytes: Callable[[int], None]) -> None:
    """Write chunks to ``out`` until exactly ``limit`` bytes; more or fewer is an error."""
    written = 0
    for chunk in chunks:
        if written + len(chunk) > limit:
            keep = limit - written
            out.write(chunk[:keep])
            on_bytes(keep)
            raise TransferError(url, "sent more bytes than the manifest's size", retry=False)
        out.write(chunk)
        written += len(chunk)
        on_bytes(len(chunk))
    if written != limit:
        raise TransferError(url, f"stream ended after {written} of {limit} bytes", retry=True)


def read_small(url: str, max_bytes: int, timeout: float) -> bytes:
    """The whole content of a small file (a manifest) at a URL or local path, at most ``max_bytes``."""
    if is_http(url):
        try:
            with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as r:
                if r.status_code != 200:
                    raise TransferError(url, f"HTTP {r.status_code} {r.reason}", retry=False)
                data = bytearray()
                for chunk in r.raw.stream(CHUNK, decode_content=False):
                    data += chunk
                    if len(data) > max_bytes:
                        raise TransferError(url, f"larger than {max_bytes} bytes", retry=False)
                return bytes(data)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
            raise TransferError(url, f"connection failed: {e}", retry=True) from e
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise TransferError(url, "not found", retry=False) from e
    except (ImportError, ValueError, OSError) as e:
        raise TransferError(url, f"cannot read: {e}", retry=False) from e
    if len(data) > max_bytes:
        raise TransferError(url, f"larger than {max_bytes} bytes", retry=False)
    return data
