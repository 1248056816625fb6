"""The training loader's tar reader against webdataset's, on the tar dialects Python writes, and
on damaged tars."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
from webdataset.tariterators import tarfile_samples

from pipeline import shards
from pipeline.tar_records import TarStreamError, tar_records, url_records

LONG_DIR = "a-folder-whose-name-is-long-enough/" * 3  # 105 characters: past ustar's 100-byte name


def write(path: Path, members: list[tuple[str, bytes]], form: int) -> Path:
    with tarfile.open(path, "w", format=form) as tar:
        for name, data in members:
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


MEMBERS = [
    ("__index__", b"webdataset leaves metadata members out"),
    ("k0.lq.png", b"\x89PNG lq 0"),
    ("k0.JSON", b'{"upper-case suffix": "lowered"}'),
    ("k0.npz", b"x" * 1000),
    ("dir/", b""),
    ("dir/k1.lq.png", b"in a folder"),
    ("dir/k1.gt.png", b""),
    (LONG_DIR + "k2.lq.png", b"ustar prefix, GNU long name or pax path"),
    ("k3" + "-long" * 30 + ".txt", b"a long key without a folder"),
    ("k4.txt", bytes(range(256)) * 5),
]


def reference_records(path: Path) -> list[dict]:
    return list(tarfile_samples([{"url": str(path)}]))


@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_records_are_webdatasets_in_every_dialect(tmp_path, form):
    members = MEMBERS if form != tarfile.USTAR_FORMAT else [m for m in MEMBERS if "-long" not in m[0]]
    path = write(tmp_path / "s.tar", members, form)
    ours = list(url_records([str(path)], handler=lambda e: False))
    assert ours == reference_records(path)
    assert [r["__key__"] for r in ours][:2] == ["k0", "dir/k1"] and ours[0]["json"].startswith(b'{"upper')


def test_a_shard_of_ours_reads_through_a_pipe_as_from_the_file(tmp_path):
    records = [{"__key__": f"set_{i:03d}", "lq.png": bytes([i]) * (100 + i), "json": b"{}"} for i in range(5)]
    path = tmp_path / "000000.tar"
    shards.write_tar(path, shards.record_members(records))
    from_file = list(url_records([str(path)], handler=lambda e: False))
    from_pipe = list(url_records([f"pipe:cat {path}"], handler=lambda e: False))
    assert [{k: v for k, v in r.items() if k != "__url__"} for r in from_pipe] == [
        {k: v for k, v in r.items() if k != "__url__"} for r in from_file]
    assert [r["lq.png"] for r in from_file] == [r["lq.png"] for r in records]


def test_a_truncated_tar_is_reported_with_its_name_and_offset_and_the_next_tar_is_read(tmp_path):
    good = write(tmp_path / "good.tar", [("a.txt", b"1" * 600), ("b.txt", b"2" * 600)], tarfile.GNU_FORMAT)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:512 * 5])  # a, then b's header and half its data
    errors = []
    records = list(url_records([str(cut), str(good)], handler=lambda e: errors.append(e) or True))
    # The cut tar's "a" was still open (more of its members could have followed) when b's data
    # broke off: it is lost with the rest of that tar, and the error counts it.
    assert [r["__key__"] for r in records] == ["a", "b"] and records[0]["__url__"] == str(good)
    assert len(errors) == 1 and isinstance(errors[0], TarStreamError)
    assert str(cut) in str(errors[0]) and "truncated" in str(errors[0]) and errors[0].offset == 512 * 5


def test_an_empty_file_is_an_error_and_end_padding_cut_short_is_not(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    whole = write(tmp_path / "whole.tar", [("a.txt", b"1"), ("b.txt", b"2")], tarfile.GNU_FORMAT).read_bytes()
    (tmp_path / "short.tar").write_bytes(whole[:512 * 4 + 100])  # two members, then part of a zero block
    errors = []
    records = list(url_records([str(tmp_path / "empty.tar"), str(tmp_path / "short.tar")],
                               handler=lambda e: errors.append(e) or True))
    assert [r["__key__"] for r in records] == ["a", "b"]
    assert len(errors) == 1 and "empty.tar: tar unreadable at byte 0: empty file" in str(errors[0])


def test_a_directory_whose_header_states_a_size_has_no_data_to_skip():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type, folder.size = tarfile.DIRTYPE, 1000  # tarfile writes the size, and no data
        tar.addfile(folder)
        member = tarfile.TarInfo("k.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"abc"))
    assert list(tar_records(io.BytesIO(buf.getvalue()), "d.tar")) == [{"__key__": "k", "__url__": "d.tar",
                                                                       "txt": b"abc"}]


@pytest.mark.timeout(20)
def test_a_pax_record_of_length_zero_is_an_error_not_an_endless_loop():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo("k.txt")
        member.size, member.pax_headers = 1, {"comment": "x"}
        tar.addfile(member, io.BytesIO(b"1"))
    raw = bytearray(buf.getvalue())
    at = raw.index(b"comment=x") - 3  # "NN comment=x\n": the record's length digits
    raw[at:at + 2] = b"00"
    with pytest.raises(TarStreamError, match="malformed pax header record"):
        list(tar_records(io.BytesIO(bytes(raw)), "p.tar"))


def big_shard(path: Path, records: int = 24) -> Path:
    """A shard far larger than a pipe's buffer, so its writer is still writing when a reader stops."""
    shards.write_tar(path, shards.record_members(
        [{"__key__": f"k{i:03d}", "bin": bytes([i]) * 65536} for i in range(records)]))
    return path


def test_a_reader_that_stops_early_closes_a_pipe_without_an_error(tmp_path):
    path = big_shard(tmp_path / "big.tar")
    # A writer that fails on the broken pipe (as aws or gsutil do) when the reader leaves.
    script = tmp_path / "send.py"
    script.write_text("import sys\n"
                      f"data = open({str(path)!r}, 'rb').read()\n"
                      "try:\n"
                      "    for i in range(0, len(data), 4096):\n"
                      "        sys.stdout.buffer.write(data[i:i + 4096])\n"
                      "        sys.stdout.buffer.flush()\n"
                      "except BrokenPipeError:\n"
                      "    sys.exit(3)\n")
    writer = f"{sys.executable} {script}"
    errors = []
    records = url_records([f"pipe:{writer}", str(path)], handler=lambda e: errors.append(e) or True)
    assert next(records)["__key__"] == "k000"
    records.close()
    assert errors == []


def test_a_pipe_whose_command_fails_is_reported_after_its_data_with_the_failure(tmp_path):
    path = big_shard(tmp_path / "big.tar", records=3)
    errors = []
    # A command that fails after its data (a checksum step, say), and a download that fails
    # before any (curl's "exit 22" on a 404): the reason reaches the handler in both cases.
    records = list(url_records([f"pipe:cat {path}; exit 3", "pipe:exit 22"],
                               handler=lambda e: errors.append(e) or True))
    assert [r["__key__"] for r in records] == ["k000", "k001", "k002"]
    assert len(errors) == 2 and "exit 3" in str(errors[0])
    assert "empty file; the source failed" in str(errors[1]) and "exit 22" in str(errors[1])


def test_a_damaged_header_is_refused_and_the_handler_can_stop_the_stream(tmp_path):
    raw = bytearray(write(tmp_path / "t.tar", [("a.txt", b"1"), ("b.txt", b"2")], tarfile.GNU_FORMAT).read_bytes())
    raw[1024 + 10] ^= 0xFF  # a byte of b.txt's name
    with pytest.raises(TarStreamError, match="byte 1024: header checksum mismatch"):
        list(tar_records(io.BytesIO(bytes(raw)), "t.tar"))
    calls = []
    assert list(url_records([str(tmp_path / "missing.tar"), str(tmp_path / "t.tar")],
                            handler=lambda e: calls.append(e) and False)) == []
    assert "missing.tar" in str(calls[0]) and "FileNotFoundError" in str(calls[0])


def test_a_member_size_beyond_the_limit_is_refused_before_it_is_read():
    info = tarfile.TarInfo("huge.bin")
    info.size = 600 * 1024 * 1024  # only the header says so
    with pytest.raises(TarStreamError, match="byte 0: member size 629145600 is outside 0.."):
        list(tar_records(io.BytesIO(info.tobuf(tarfile.GNU_FORMAT)), "h.tar"))


def test_a_member_twice_in_one_record_is_an_error(tmp_path):
    path = write(tmp_path / "d.tar", [("k.txt", b"1"), ("k.txt", b"2")], tarfile.GNU_FORMAT)
    with pytest.raises(TarStreamError, match="'txt' of 'k' appears twice"):
        list(url_records([str(path)], handler=lambda e: (_ for _ in ()).throw(e)))
