"""The pipeline programs as a user meets them: one ``error:`` line for a mistake, help on every
option, and the ``python -m`` name in every usage line."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import manifest
from pipeline.published import save_manifest
from tests.test_download import closed_port_url, manifest_for, write_extraction

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("pipeline.manifest", "pipeline.extract", "pipeline.download", "pipeline.analyze", "pipeline.publish",
            "pipeline.demo_data", "pipeline.models.tiny", "pipeline.analysis.evaluate", "pipeline.analysis.train")


def assert_one_error_line(err: str, *named: str) -> None:
    """stderr is exactly one ``error: …`` line that names each of ``named``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in named:
        assert text in lines[0], err


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("module", PROGRAMS)
def test_every_option_has_help_and_usage_names_the_program(module):
    parser = importlib.import_module(module).build_parser()
    assert parser.prog == f"python -m {module}"
    for p in _parsers(parser):
        assert p.format_usage().startswith(f"usage: python -m {module}")
        undocumented = [a.dest for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
        assert not undocumented, f"{p.prog}: options without help: {undocumented}"


def _images(folder: Path, awkward_images: dict[str, bytes], names=("a", "b")) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.png").write_bytes(awkward_images["good"])
    return folder


def test_manifest_hf_accepts_a_relative_data_dir(tmp_path, awkward_images, monkeypatch, capsys):
    _images(tmp_path / "hf", awkward_images)
    monkeypatch.chdir(tmp_path)
    assert manifest.main(["hf", "--data-dir", "hf", "--dataset", "mine", "--split", "train", "--degrade", "haze",
                          "--workdir", "work", "--out", "m.parquet"]) == 0
    rows = manifest.read(str(tmp_path / "m.parquet"))
    assert sorted(Path(r["gt_uri"]).name for r in rows) == ["a.png", "b.png"]
    assert all(Path(r["lq_uri"]).is_file() and r["degradation"] == "haze" for r in rows)
    assert "manifest: m.parquet" in capsys.readouterr().out


@pytest.mark.parametrize("args, named", [
    (["paired", "--lq", "missing_lq", "--degradation", "rain"], ["missing_lq", "does not exist"]),
    (["paired", "--lq", "photos", "--degradation", "drizzle"], ["unknown degradation type 'drizzle'"]),
    (["paired", "--lq", "photos", "--degradation", "rain", "--match", "rain-(\\d+"], ["missing ), unterminated"]),
    (["synthetic", "--clean", "photos", "--degrade", "fog:x=1"], ["unknown kind 'fog'"]),
    (["hf", "--data-dir", "missing_hf", "--degrade", "haze"], ["missing_hf"]),
], ids=["missing-folder", "unknown-type", "bad-regex", "unknown-spec", "missing-hf-folder"])
def test_manifest_mistakes_are_one_line(tmp_path, awkward_images, monkeypatch, capsys, args, named):
    _images(tmp_path / "photos", awkward_images)
    monkeypatch.chdir(tmp_path)
    assert manifest.main([*args, "--dataset", "d", "--split", "test", "--out", "m.parquet"]) == 2
    assert_one_error_line(capsys.readouterr().err, *named)
    assert not (tmp_path / "m.parquet").exists()


def test_manifest_missing_spec_file_is_one_line(tmp_path, capsys):
    assert manifest.main(["spec", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "m.parquet")]) == 2
    assert_one_error_line(capsys.readouterr().err, "absent.yaml")


@pytest.fixture
def empty_manifest(tmp_path) -> str:
    return manifest.write(manifest.Manifest(), str(tmp_path / "empty.parquet"))[0]


@pytest.mark.parametrize("args, named", [
    (["--manifest", "absent.parquet"], ["absent.parquet: no such manifest file"]),
    (["--manifest", "EMPTY", "--preset", "huge"], ["unknown model preset 'huge'", "offline"]),
    (["--manifest", "EMPTY", "--config", "absent.yaml"], ["absent.yaml", "cannot read"]),
    (["--manifest", "EMPTY", "--set", "stages.describer.gpus=1"], ["gpus"]),
    (["--manifest", "EMPTY", "--out", "OTHER"], ["another configuration", "new --out folder"]),
], ids=["missing-manifest", "unknown-preset", "missing-config", "unknown-setting", "other-config-in-out"])
def test_extract_mistakes_are_one_line(tmp_path, empty_manifest, monkeypatch, capsys, args, named):
    from pipeline import extract

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"output_hash": "0123"}')
    monkeypatch.chdir(tmp_path)
    argv = [{"EMPTY": empty_manifest, "OTHER": str(other)}.get(a, a) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert extract.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, *named)


def test_extract_mistake_from_the_command_line_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.extract", "--manifest", str(tmp_path / "absent.parquet"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "absent.parquet: no such manifest file")


@pytest.fixture
def published(tmp_path) -> Path:
    extraction = write_extraction(tmp_path / "extraction")
    return save_manifest(manifest_for(extraction, "https://example.invalid/set"), tmp_path / "published.json")


@pytest.mark.parametrize("args, named", [
    (["absent.json", "--dest", "dest"], ["absent.json", "file not found"]),
    (["NOT_JSON", "--dest", "dest"], ["invalid JSON"]),
    (["CLOSED_URL", "--dest", "dest"], ["cannot fetch the manifest", "connection failed"]),
    (["PUBLISHED", "--dest", "dest", "--shards", "7"], ["'7' is outside 0-2"]),
    (["PUBLISHED", "--dest", "A_FILE"], ["a_file"]),
], ids=["missing-manifest", "not-json", "unreachable-url", "bad-range", "dest-is-a-file"])
def test_download_mistakes_are_one_line(tmp_path, published, monkeypatch, capsys, args, named):
    from pipeline import download

    (tmp_path / "not_json.json").write_text("<html>a web page</html>")
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    values = {"NOT_JSON": "not_json.json", "CLOSED_URL": closed_port_url() + "/published.json",
              "PUBLISHED": str(published), "A_FILE": "a_file"}
    argv = [values.get(a, a) for a in args]
    assert download.main([*argv, "--no-progress", "--retries", "1", "--timeout", "5"]) == 2
    assert_one_error_line(capsys.readouterr().err, *named)


def test_analyze_without_images_is_one_line(tmp_path, capsys):
    from pipeline import analyze

    assert analyze.main([str(tmp_path)]) == 1
    assert_one_error_line(capsys.readouterr().err, "no image files found", str(tmp_path))


@pytest.mark.parametrize("args, named", [
    (["absent_dir", "--base-url", "https://example.org/x", "--license", "MIT"], ["index.json: not found"]),
    (["EXTRACTION", "--license", "MIT"], ["--base-url"]),
    (["EXTRACTION", "--base-url", "https://example.org/x", "--license", "MIT", "--out", "A_FILE/m.json"],
     ["a_file"]),
], ids=["missing-dir", "no-mirror", "out-not-writable"])
def test_publish_mistakes_are_one_line(tmp_path, monkeypatch, capsys, args, named):
    from pipeline import publish

    write_extraction(tmp_path / "extraction")
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    argv = [{"EXTRACTION": "extraction", "A_FILE/m.json": "a_file/m.json"}.get(a, a) for a in args]
    assert publish.main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, *named)


@pytest.mark.parametrize("module, args, named", [
    ("pipeline.demo_data", ["--tile", "0"], ["--tile 0", "at least 8"]),
    ("pipeline.demo_data", ["--out", "A_FILE/demo"], ["a_file"]),
    ("pipeline.models.tiny", ["--out", "A_FILE/tiny"], ["a_file"]),
    ("pipeline.analysis.evaluate", ["--out", "eval", "--manifest", "absent.parquet"],
     ["absent.parquet: no such manifest file"]),
    ("pipeline.analysis.evaluate", ["--out", "eval", "--set", "synthetic", "--photos", "absent_dir"], ["absent_dir"]),
    ("pipeline.analysis.train", ["--installed-only", "--photo-dir", "absent_dir"], ["absent_dir"]),
], ids=["demo-tile", "demo-out", "tiny-out", "evaluate-manifest", "evaluate-photos", "train-photo-dir"])
def test_other_program_mistakes_are_one_line(tmp_path, monkeypatch, capsys, module, args, named):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    argv = [{"A_FILE/demo": "a_file/demo", "A_FILE/tiny": "a_file/tiny"}.get(a, a) for a in args]
    assert importlib.import_module(module).main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, *named)
    assert not (tmp_path / "eval").exists()
