"""The analysis end to end: Analysis of real photos, the CLI on good and bad files, extraction's
analysis stage, the evaluator's tables, and the classifier's weights file."""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import degrade, manifest, stages, vocabulary
from pipeline.analysis import classifier, describers
from pipeline.analysis import evaluate as ev
from pipeline.analysis.analyze import analyze
from pipeline.analysis.classifier import ANALYSED_TYPES, Classifier, default_classifier
from pipeline.analysis.train import load_photo
from pipeline.analyze import main as cli_main
from pipeline.image_files import encode_png

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "denoise" / "Kodak24"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A held-out real photo when the shared data is there, else a scikit-image one."""
    path = KODAK / "kodim03.png"
    if path.exists():
        return np.asarray(Image.open(path).convert("RGB"))
    return load_photo("coffee")


def test_noisy_photo_is_noise_with_its_sigma(photo):
    noisy, _ = degrade.apply(photo, "noise:sigma=30", seed=3)
    a = analyze(noisy)
    assert a.types[0] == "noise"
    assert a.degradations[0].params["sigma"] == pytest.approx(30, abs=3)
    assert "noise (σ≈" in a.text


@pytest.mark.parametrize("spec,expected", [("jpeg:quality=15", "jpeg"), ("low-light", "low-light"),
                                           ("haze:beta=2.2,airlight=0.9", "haze"),
                                           ("defocus-blur:radius=5", "blur")])
def test_degraded_photo_top_type(photo, spec, expected):
    assert analyze(degrade.apply(photo, spec, seed=5)[0]).types[0] == expected


@pytest.mark.parametrize("angle", [65, 90, 118])
def test_rain_reports_the_direction_of_its_streaks(photo, angle):
    rainy, _ = degrade.apply(photo, f"rain:angle={angle},density=0.01,intensity=0.8", seed=2)
    a = analyze(rainy)
    assert a.types[0] == "rain"
    assert a.degradations[0].params["angle_deg"] == pytest.approx(angle, abs=4)


def test_images_smaller_than_a_streak_patch_give_finite_json(photo):
    rainy, _ = degrade.apply(photo[:20, :24].copy(), "rain:angle=80,density=0.05,intensity=0.9", seed=1)
    json.dumps(analyze(rainy).to_dict(), allow_nan=False)


def test_analysis_dict_is_json_and_vector_follows_vocabulary(photo):
    a = analyze(photo)
    d = json.loads(json.dumps(a.to_dict()))
    assert len(d["vector"]) == len(vocabulary.DEGRADATION_TYPES)
    assert d["vector"][vocabulary.DEGRADATION_TYPES.index("shadow")] == 0.0
    assert d["degradations"][0]["type"] in ANALYSED_TYPES
    assert d["text"] == a.text
    assert d["classifier"] == default_classifier().digest and len(d["classifier"]) == 16


def test_jpeg_bytes_give_the_tables_quality(photo):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=20)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    a = analyze(decoded, jpeg_bytes=buf.getvalue())
    jpeg = next(d for d in a.degradations if d.type == "jpeg")
    assert jpeg.params == {"quality": 20, "source": "quantisation table"}


def _write_inputs(folder: Path, photo: np.ndarray) -> dict[str, Path]:
    files = {"good": folder / "good.png", "corrupt": folder / "corrupt.png", "tiny": folder / "tiny.png",
             "gray16": folder / "gray16.png", "palette": folder / "palette.gif", "text": folder / "notes.jpg"}
    files["good"].write_bytes(encode_png(photo[:200, :200].copy()))
    files["corrupt"].write_bytes(encode_png(photo[:64, :64].copy())[:300])
    Image.fromarray(photo[:6, :6].copy()).save(files["tiny"])
    Image.fromarray(photo[:100, :100, 0].astype(np.uint16) * 257).save(files["gray16"])
    Image.fromarray(photo[:100, :100].copy()).convert("P").save(files["palette"])
    files["text"].write_text("not an image")
    return files


def test_cli_reports_each_file_and_goes_on(tmp_path, photo, capsys):
    files = _write_inputs(tmp_path, photo)
    missing = str(tmp_path / "missing.png")
    assert cli_main([str(files[k]) for k in files] + [missing, "--json"]) == 1
    out, err = capsys.readouterr()
    # The count goes to stderr: stdout stays one JSON object per line.
    assert err.splitlines()[-1] == "error: 4 of 7 files could not be analysed (see their lines above)"
    lines = [json.loads(line) for line in out.splitlines()]
    by_path = {line["path"]: line for line in lines}
    assert len(lines) == len(files) + 1
    for ok in ("good", "gray16", "palette"):
        line = by_path[str(files[ok])]
        assert line["degradations"][0]["type"] in ANALYSED_TYPES and line["text"]
        assert line["classifier"] == default_classifier().digest
    assert "truncated" in by_path[str(files["corrupt"])]["error"]
    assert "at least" in by_path[str(files["tiny"])]["error"]
    assert "not a readable image" in by_path[str(files["text"])]["error"]
    assert by_path[missing]["error"] == "file not found"
    assert "notes" in by_path[str(files["gray16"])]


def test_cli_fails_when_any_file_fails(tmp_path, photo, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    good = tmp_path / "good.png"
    good.write_bytes(encode_png(photo[:64, :64].copy()))
    assert cli_main([str(bad), str(good)]) == 1
    out, err = capsys.readouterr()
    assert f"{bad}: error:" in out and out.splitlines()[1].startswith(f"{good}: ")
    assert err.splitlines()[-1] == "error: 1 of 2 files could not be analysed (see their lines above)"
    assert cli_main([str(good)]) == 0


def test_cli_expands_directories(tmp_path, photo, capsys):
    (tmp_path / "a.png").write_bytes(encode_png(photo[:64, :64].copy()))
    (tmp_path / "readme.txt").write_text("skipped")
    assert cli_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(str(tmp_path / "a.png"))


def _decoded(folder: Path, files: dict[str, bytes]) -> dict[str, list]:
    """What extraction's decode stage hands the analysis stage for these files (one row each)."""
    rows: dict[str, list] = {"key": [], "lq_uri": [], "gt_uri": [], "lq_sha256": [], "gt_sha256": [],
                             "width": [], "height": []}
    for key, data in files.items():
        path = folder / key
        path.write_bytes(data)
        try:
            width, height = Image.open(io.BytesIO(data)).size
        except OSError:
            width = height = 0
        for column, value in (("key", key), ("lq_uri", str(path)), ("gt_uri", ""), ("lq_sha256", ""),
                              ("gt_sha256", ""), ("width", width), ("height", height)):
            rows[column].append(value)
    return stages.decode_batch(rows, max_pixels=10**7)


def test_extraction_analysis_stage_fills_rows_and_carries_errors_as_rows(tmp_path, photo):
    jpeg = io.BytesIO()
    Image.fromarray(photo[:128, :128].copy()).save(jpeg, format="JPEG", quality=20)
    batch = _decoded(tmp_path, {"good": encode_png(photo[:128, :128].copy()), "jpeg": jpeg.getvalue(),
                                "small": encode_png(photo[:10, :10].copy()), "broken": b"not an image"})
    good, from_jpeg, small, broken = range(4)
    # The decode stage hands on the pixels it decoded: the analysis (and the model stages) read
    # them instead of decoding the PNG again. A row that failed there has none.
    assert np.array_equal(batch[stages.LQ_PIXELS][good], photo[:128, :128])
    assert batch[stages.LQ_PIXELS][broken].shape == (0, 0, 3)
    out = stages.AnalysisStage()(batch)

    analysis = json.loads(out["analysis"][good])
    assert len(analysis["vector"]) == len(vocabulary.DEGRADATION_TYPES)
    assert out["hint"][good] == analysis["text"] and out["error"][good] == ""
    # The decode stage keeps a JPEG's own bytes so the analysis reads its quantisation tables.
    quality = next(d for d in json.loads(out["analysis"][from_jpeg])["degradations"] if d["type"] == "jpeg")
    assert quality["params"] == {"quality": 20, "source": "quantisation table"}
    # Decodable but too small to analyse: this row fails in the analysis, the others go on.
    assert out["error"][small].startswith("analysis: ValueError: image is 10x10")
    assert out["failed_stage"][small] == "analysis" and out["analysis"][small] == out["hint"][small] == ""
    # A row that failed before is skipped and keeps its own error.
    assert out["error"][broken].startswith("decode: ") and out["failed_stage"][broken] == "decode"
    assert out["analysis"][broken] == ""
    assert len(out["t_analysis"]) == 4


def test_synthetic_set_does_not_depend_on_where_the_data_lives(tmp_path, photo):
    for place in ("here", "there/deeper"):
        (tmp_path / place / "photos").mkdir(parents=True)
        (tmp_path / place / "photos" / "p.png").write_bytes(encode_png(photo[:96, :96].copy()))
    here, there = (list(ev.synthetic([tmp_path / place / "photos"], {"rain": ("rain",)}))
                   for place in ("here", "there/deeper"))
    assert np.array_equal(here[0].pixels, there[0].pixels)


def test_evaluate_synthetic_writes_tables(tmp_path, photo):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"p{i}.png").write_bytes(encode_png(photo[i * 64: i * 64 + 192, :192].copy()))
    specs = {"clean": ("",), "noise": ("noise:sigma=20..40",), "jpeg": ("jpeg:quality=10..30",)}
    report = ev.evaluate(ev.synthetic([photos], specs), {"analysis": describers.analysis_describer(),
                                                          "always-rain": lambda p, b: ["rain"]})
    assert report.tallies["analysis"].total == 6 and report.tallies["analysis"].counts.sum() == 6
    assert report.tallies["always-rain"].top1 == 0.0
    assert len(report.errors["sigma"]) == 2 and len(report.errors["quality"]) == 2
    text = ev.write(report, tmp_path / "out", "test")
    for name in ("analysis_confusion.csv", "analysis_confusion.md", "analysis_confusion.png", "report.json",
                 "predictions.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| noise |" in text and "| sigma |" in text


def test_model_describers_run_through_the_same_report(tmp_path, photo):
    # The tiny random models answer near chance; what matters is that their answers are mapped
    # onto the vocabulary and scored like the analysis's.
    chosen = describers.build(["analysis", "mllm", "clip"], "tiny")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes(encode_png(photo[:96, :128].copy()))
    report = ev.evaluate(ev.synthetic([photos], {"clean": ("",), "rain": ("rain",)}), chosen)
    for name in ("analysis", "mllm", "clip"):
        assert report.tallies[name].total == 2 and report.tallies[name].counts.sum() == 2
    clip_rows = [p for p in report.predictions if p[2] == "clip"]
    assert sorted(clip_rows[0][3].split("+")) == sorted(ANALYSED_TYPES)
    assert all(t in vocabulary.DEGRADATION_TYPES for p in report.predictions if p[2] == "mllm"
               for t in p[3].split("+"))
    with pytest.raises(ValueError, match="unknown describer"):
        describers.build(["analysis", "oracle"])


def test_evaluate_scores_other_weights_given_on_the_command_line(tmp_path, photo, capsys):
    # Weights whose snow output is pushed far up: every image must then read snow, so the
    # command must have scored with them and not with the shipped classifier.
    model = default_classifier()
    b2 = model.b2.copy()
    b2[:, ANALYSED_TYPES.index("snow")] += 50.0
    dataclasses.replace(model, b2=b2).save(tmp_path / "snowy.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes(encode_png(photo[:128, :128].copy()))
    args = ["--photos", str(photos), "--set", "synthetic"]
    ev.main(["--out", str(tmp_path / "shipped"), *args])
    ev.main(["--out", str(tmp_path / "snowy"), *args, "--weights", str(tmp_path / "snowy.safetensors")])
    shipped, snowy = (json.loads((tmp_path / d / "report.json").read_text())["describers"]["analysis"]
                      for d in ("shipped", "snowy"))
    snow = ANALYSED_TYPES.index("snow")
    assert np.array(snowy["confusion"])[:, snow].sum() == snowy["n"] == 8
    assert np.array(shipped["confusion"])[:, snow].sum() < shipped["n"]
    capsys.readouterr()
    assert ev.main(["--out", str(tmp_path / "none"), *args, "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    (tmp_path / "garbage.safetensors").write_bytes(b"not weights")
    assert ev.main(["--out", str(tmp_path / "none"), *args, "--weights", str(tmp_path / "garbage.safetensors")]) == 2
    assert "garbage.safetensors: not a safetensors weights file" in capsys.readouterr().err


def test_evaluate_with_other_weights_never_needs_the_shipped_ones(tmp_path, photo, monkeypatch):
    # Retrained weights are compared while the shipped file may be stale (trained on other
    # features): no part of the run may load it, the parameter errors included.
    default_classifier().save(tmp_path / "w.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes(encode_png(photo[:128, :128].copy()))
    monkeypatch.setattr(classifier, "WEIGHTS", tmp_path / "absent.safetensors")
    default_classifier.cache_clear()
    try:
        ev.main(["--out", str(tmp_path / "out"), "--photos", str(photos), "--set", "synthetic",
                 "--weights", str(tmp_path / "w.safetensors")])
        with pytest.raises(FileNotFoundError):
            default_classifier()  # the shipped weights really were out of reach
    finally:
        default_classifier.cache_clear()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["describers"]["analysis"]["n"] == 8 and "sigma" in report["parameter_mae"]


def test_evaluate_reads_a_manifest(tmp_path, photo):
    lq = tmp_path / "lq.png"
    noisy, applied = degrade.apply(photo[:128, :128].copy(), "noise:sigma=25", seed=1)
    lq.write_bytes(encode_png(noisy))
    table = pa.Table.from_pylist([{"key": "s0", "dataset": "t", "split": "test", "task": "denoise",
                                   "degradation": "noise", "params": json.dumps(applied), "seed": 1,
                                   "lq_uri": "lq.png", "gt_uri": None, "width": 128, "height": 128,
                                   "lq_sha256": "", "gt_sha256": None, "notes": ""}], schema=manifest.SCHEMA)
    pq.write_table(table, tmp_path / "m.parquet")
    samples = list(ev.from_manifest(str(tmp_path / "m.parquet")))
    assert samples[0].types == ("noise",) and samples[0].params == {"sigma": 25.0}


def test_classifier_weights_round_trip_and_refuse_other_features(tmp_path):
    model = default_classifier()
    model.save(tmp_path / "w.safetensors")
    again = Classifier.load(tmp_path / "w.safetensors")
    x = np.random.default_rng(0).random((3, model.mean.shape[0]))
    assert np.allclose(model.scores(x), again.scores(x), atol=1e-5)
    # The digest survives the round trip and changes with any weight.
    assert again.digest == model.digest
    nudged = dataclasses.replace(again, b2=again.b2 + 1e-3)
    assert nudged.digest != model.digest
    from safetensors.numpy import load_file, save_file

    save_file(load_file(str(tmp_path / "w.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={"features": json.dumps(["other"])})
    with pytest.raises(ValueError, match="retrain"):
        Classifier.load(tmp_path / "bad.safetensors")


def test_single_perceptron_weights_are_refused_with_a_retrain_message(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    default_classifier().save(tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    arrays = {k: (v[0] if k in ("w1", "b1", "w2", "b2") else v)
              for k, v in load_file(str(tmp_path / "w.safetensors")).items()}
    save_file(arrays, str(tmp_path / "single.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="single perceptron.*retrain"):
        Classifier.load(tmp_path / "single.safetensors")
