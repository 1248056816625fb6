"""The restore programs from the command line: a user's mistake is one line, Ctrl-C says how to go
on, every option is explained, shards may be named by a glob."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import manifest
from pipeline.image_files import save_png
from restore import checkpoint, data, demo, evaluate, export, infer, train
from restore.model import Restorer, tiny
from restore.model import __main__ as model_cli
from tests.conftest import interruptible
from tests.test_data import WIDTH, pattern, write_shards

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def one_error_line(capsys) -> str:
    """The single ``error: ...`` line a failed command wrote on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2, per_shard=5, test_samples=2, held_out="val")


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> tuple[Path, Path]:
    """A manifest of two noisy patterns with their clean images, and a tiny saved restorer."""
    root = tmp_path_factory.mktemp("testset")
    (root / "clean").mkdir()
    for i in range(2):
        save_png(pattern(48, i), str(root / "clean" / f"wave{i}.png"))
    built = manifest.from_clean_folder(str(root / "clean"), ["noise:sigma=25"], "waves", "test", str(root / "lq"))
    path, _ = manifest.write(built, str(root / "manifest.parquet"))
    torch.manual_seed(0)
    return Path(path), Restorer(tiny(token_width=WIDTH, clip_width=WIDTH)).save_pretrained(root / "model")


# --- a user's mistake: one line, a failing status ---------------------------------------------------------

def test_evaluate_names_a_missing_manifest_checkpoint_or_shards_in_one_line(test_set, tmp_path, capsys):
    path, model_dir = test_set
    args = ["--preset", "analysis-only", "--out", str(tmp_path / "eval")]
    assert evaluate.main(["--checkpoint", str(model_dir), "--manifest", str(tmp_path / "nope.parquet"), *args]) != 0
    assert "nope.parquet" in one_error_line(capsys)
    assert evaluate.main(["--checkpoint", str(tmp_path / "no_run"), "--manifest", str(path), *args]) != 0
    assert "no_run: no restorer here" in one_error_line(capsys)
    assert evaluate.main(["--checkpoint", str(model_dir), "--manifest", str(path), "--shards",
                          str(tmp_path / "priors" / "*.tar"), *args]) != 0
    assert "*.tar matches no file" in one_error_line(capsys)
    assert evaluate.main(["--checkpoint", str(model_dir), "--manifest", str(path), "--shards",
                          str(tmp_path / "priors" / "index.json"), *args]) != 0
    assert "index.json: no such index or manifest file" in one_error_line(capsys)


def test_evaluate_refuses_a_manifest_whose_images_are_gone_before_loading_anything(test_set, tmp_path, capsys):
    path, model_dir = test_set
    moved = tmp_path / "moved"
    shutil.copytree(path.parent, moved)
    rows = manifest.read(str(path))
    # The manifest names its images by absolute path: point them into the copy, then remove its LQ folder.
    for row in rows:
        row["lq_uri"] = row["lq_uri"].replace(str(path.parent), str(moved))
    copy, _ = manifest.write(manifest.Manifest(rows), str(moved / "manifest.parquet"))
    shutil.rmtree(moved / "lq")
    assert evaluate.main(["--checkpoint", str(tmp_path / "no_run"), "--manifest", copy]) != 0
    line = one_error_line(capsys)
    assert "2 of 4 image files do not exist" in line and str(moved / "lq") in line


def test_train_names_a_bad_setting_config_or_shard_pattern_in_one_line(shard_index, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    assert train.main(["--shards", str(tmp_path / "nothing" / "*.tar"), *out]) != 0
    assert f"{tmp_path / 'nothing' / '*.tar'} matches no file" in one_error_line(capsys)
    # The restorer's settings are checked before any data is read: these shards do not exist either.
    assert train.main(["--shards", str(tmp_path / "missing.tar"), "--set", "model_overrides.nonsense=1", *out]) != 0
    assert "unknown setting(s) model_overrides.nonsense; model_overrides has: dim" in one_error_line(capsys)
    assert train.main(["--shards", str(shard_index), "--set", "nonsense=1", *out]) != 0
    assert "unknown setting(s) --set.nonsense" in one_error_line(capsys)
    assert train.main(["--shards", str(shard_index), "--set", "lr=fast", *out]) != 0
    assert "--set.lr: cannot read 'fast' as float" in one_error_line(capsys)
    assert train.main(["--config", str(tmp_path / "missing.yaml"), *out]) != 0
    assert "missing.yaml" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_bug_is_not_hidden_as_a_user_error(shard_index, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(train, "fit", broken)
    with pytest.raises(KeyError, match="a bug"):
        train.main(["--shards", str(shard_index), "--out", str(tmp_path / "run")])


# --- --shards SPEC ------------------------------------------------------------------------------------------

def test_shards_by_glob_brace_pattern_or_folder_resolve_alike(shard_index):
    folder = shard_index.parent
    by_brace = data.resolve(str(folder / "{000000..000001}.tar"))
    assert by_brace.samples == 10 and len(by_brace.urls) == 2
    assert data.resolve(str(folder / "*.tar")) == by_brace
    assert data.resolve(str(folder / "{000000,000001}*.tar")) == by_brace
    assert data.resolve(str(folder)).urls == by_brace.urls == data.resolve(str(shard_index)).urls


def test_a_folder_without_an_index_stands_for_its_tars(shard_index, tmp_path):
    for tar in shard_index.parent.glob("*.tar"):
        shutil.copy(tar, tmp_path)
    assert [Path(u).name for u in data.resolve(str(tmp_path)).urls] == ["000000.tar", "000001.tar"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/\*\.tar matches no file"):
        data.resolve(str(tmp_path / "empty"))


# --- help -------------------------------------------------------------------------------------------------

def test_every_option_of_every_program_is_explained_under_its_python_m_name():
    parsers = {"train": train.build_parser(), "evaluate": evaluate.build_parser(), "infer": infer.build_parser(),
               "export": export.build_parser(), "model": model_cli.build_parser(), "demo": demo.build_parser()}
    for name, parser in parsers.items():
        assert parser.prog == f"python -m restore.{name}"
        unexplained = [a.option_strings or a.dest for a in parser._actions if not a.help]
        assert not unexplained, f"restore.{name}: {unexplained}"


def test_train_help_lists_the_settings_set_takes_with_types_and_defaults():
    text = train.build_parser().format_help()
    assert "  lr: float = 0.0003\n" in text and "  val_shards: str | None = None\n" in text
    assert "  synthesis.prior_preset: str = 'offline'\n" in text
    assert "    model_overrides.dim: int\n" in text
    for name in (f for f in train.TrainConfig.__dataclass_fields__ if f not in ("synthesis", "model_overrides")):
        assert f"  {name}: " in text, name


# --- Ctrl-C -----------------------------------------------------------------------------------------------

# A few steps of the tiny restorer; no validation or scheduled save before the end.
TINY = dict(model="tiny", crop=32, batch_size=2, workers=0, shuffle_buffer=8, steps=4, warmup_steps=1, log_every=1,
            val_every=1000, val_samples=2, save_every=1000, threads=1)


def tiny_run(index: Path, out: Path, **changes) -> list[str]:
    """The command-line arguments of a TINY run (with ``changes``)."""
    sets = [a for k, v in {**TINY, **changes}.items() for a in ("--set", f"{k}={v}")]
    return ["--shards", str(index), "--out", str(out), *sets]


def test_ctrl_c_in_training_saves_the_step_and_resume_goes_on_from_it(shard_index, tmp_path):
    config = train.TrainConfig(shards=str(shard_index), out=str(tmp_path / "run"), **TINY)

    def ctrl_c_at_two(step: int, logs: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(train.Interrupted) as stopped:
        train.fit(config, on_step=ctrl_c_at_two)
    assert stopped.value.step == 3  # the step under way when the signal arrived is finished, and saved
    last = tmp_path / "run" / "checkpoints" / "last"
    assert checkpoint.read_state(last)["step"] == 3
    assert signal.getsignal(signal.SIGINT) == before  # training's own handler is gone
    train.fit(config, resume=True)
    assert checkpoint.read_state(last)["step"] == 4


def test_ctrl_c_from_the_terminal_stops_training_with_status_130_and_the_command_to_resume(shard_index, tmp_path,
                                                                                          capsys):
    run = tmp_path / "run"
    # A DataLoader worker too: Ctrl-C in a terminal signals the whole process group.
    args = tiny_run(shard_index, run, steps=1000, workers=1)
    child = subprocess.Popen([sys.executable, "-m", "restore.train", *args], cwd=REPO, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, start_new_session=True, preexec_fn=interruptible,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert child.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130
    assert "Traceback" not in err and "leaked" not in err, err
    match = re.search(r"interrupted: at step (\d+); last checkpoint: step (\d+) in (\S+); resume with: (.+)", err)
    assert match, err
    step, saved, folder, command = int(match[1]), int(match[2]), Path(match[3]), shlex.split(match[4])
    assert step == saved >= 2 and folder == (run / "checkpoints" / f"step_{step:08d}").resolve()
    assert command[:3] == ["python", "-m", "restore.train"] and command[-1] == "--resume"
    # The printed command resumes (here told to stop one step later, and to read in this process).
    assert train.main([*command[3:], "--set", f"steps={step + 1}", "--set", "workers=0"]) == 0
    assert f"resumed from {folder} at step {step}" in capsys.readouterr().err
    assert checkpoint.read_state(run / "checkpoints" / "last")["step"] == step + 1
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()][-1] == step + 1


def test_evaluate_without_a_checkpoint_scores_the_shipped_one(test_set, tmp_path):
    path, _ = test_set
    out = tmp_path / "eval"
    assert evaluate.main(["--manifest", str(path), "--out", str(out), "--limit", "1", "--threads", "1"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1
    # The shipped restorer takes σ=15 noise well above its input; the tiny random one could not.
    assert records[0]["psnr"] > records[0]["psnr_in"] + 3


def test_demo_names_a_folder_of_another_extraction_instead_of_a_traceback(tmp_path):
    # An earlier demo run with other settings left its priors: the demo says so in one line.
    (tmp_path / "priors").mkdir()
    (tmp_path / "priors" / "config.json").write_text(json.dumps({"output_hash": "0123"}))
    done = subprocess.run([sys.executable, "-m", "restore.demo", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"error: {tmp_path / 'priors'} holds shards of another configuration" in done.stderr
