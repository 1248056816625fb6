"""Prior extraction on Ray: a dataset manifest in, webdataset shards of prior samples out.

    python -m pipeline.extract --manifest M.parquet --out DIR [--preset offline|tiny|default|quality]
                               [--config YAML] [--set stages.describer.num_gpus=1 ...] [--retry-failed]
    ray job submit --working-dir . -- python -m pipeline.extract --manifest /shared/M.parquet --out /shared/priors

The Ray Data graph: shard descriptors → the manifest rows of each shard, read by the workers →
decode/validate (CPU tasks; each LQ image is decoded here once, its pixels carried to every stage
that looks at it) → weight-free analysis (CPU) → degradation describer and captioner (one MLLM
actor asks both questions of one look at the image) → reference synthesizer (diffusion) →
embeddings (CLIP and/or a sentence encoder) → parts written by the workers
(``pipeline.shard_assembly``). The driver reads neither the manifest's rows nor any image: it
plans from the manifest's row count and the shards already written, receives one small status row
per sample, and starts a task that assembles each shard once all of its rows are in. A preset
without an MLLM (``offline``) takes the analysis's sentence as the degradation text and has no
caption; without a diffusion model there is no reference stage. With no cluster to join,
``ray.init`` starts a local one.

Rerunning the same command skips complete shards; ``--retry-failed`` re-processes only the rows
whose status is error and rewrites their shards with the earlier good samples kept. So Ctrl-C
loses only the shards in progress: the program says how many are complete and exits with 130.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import cli, extract_config, manifest, shard_assembly, shards, stages, typed_config
from pipeline.extract_config import ExtractConfig, StageResources
from pipeline.image_files import sha256_file
from pipeline.models import mllm_vllm, presets
from pipeline.shard_assembly import STAGE_NAMES

# The step that runs a chain of CPU-only stages (chain_cpu_steps), and its entry in config.stages.
CHAIN = "cpu"


class ExtractError(Exception):
    """A run that cannot start as asked: names the folder or setting and what to do instead."""


@dataclass(frozen=True)
class ShardWork:
    """One shard to (re)write this run: its rows as a range of the manifest, and for a retried
    shard the keys of its failed rows (the only ones processed again), a key once per row it has."""

    shard: int
    start: int
    stop: int
    only_keys: tuple[str, ...] = ()

    @property
    def retried(self) -> bool:
        return bool(self.only_keys)

    @property
    def rows(self) -> int:
        return len(self.only_keys) if self.only_keys else self.stop - self.start


def plan_work(num_rows: int, out: Path, samples_per_shard: int, retry_failed: bool) -> tuple[list[ShardWork], int]:
    """The shards left to write in ``out``, from the manifest's row count and the shards' own
    stats and status files (a retried shard's failed keys are the only rows read)."""
    planned = shards.plan(num_rows, samples_per_shard)
    done = shards.completed(out)
    work = []
    for shard, (start, stop) in enumerate(planned):
        if shard not in done:
            work.append(ShardWork(shard, start, stop))
        elif retry_failed and shards.read_stats(out, shard)["failed"]:
            status = shards.read_status(out, shard)
            # A key that has a good sample is done: its other rows failed as duplicates of it, and
            # would again. A failed key is read once per row it has (two rows: two rows back).
            good = {s.key for s in status if s.status == "ok"}
            failed = sorted(s.key for s in status if s.status == "error" and s.key not in good)
            if failed:
                work.append(ShardWork(shard, start, stop, tuple(failed)))
    return work, len(planned)


_MANIFESTS: dict[str, pq.ParquetFile] = {}


def read_shard_rows(descriptor: dict[str, Any], manifest_path: str) -> list[dict[str, Any]]:
    """Ray Data stage: the manifest rows of one block descriptor (``block_descriptors``), with their
    shard id.

    Workers read the rows, so the driver never holds the manifest: only the row groups covering
    the block's range are read. Nulls would reach the stages as NaN in numpy batches: they carry ""
    and -1 instead (undone when the record is written). Relative image paths are resolved against
    the manifest's folder.
    """
    if manifest_path not in _MANIFESTS:
        _MANIFESTS[manifest_path] = manifest.open_manifest(manifest_path)
    parquet = _MANIFESTS[manifest_path]
    meta = parquet.metadata
    bounds = [0]
    for g in range(meta.num_row_groups):
        bounds.append(bounds[-1] + meta.row_group(g).num_rows)
    start, stop = int(descriptor["start"]), int(descriptor["stop"])
    groups = [g for g in range(meta.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
    table = parquet.read_row_groups(groups, columns=manifest.SCHEMA.names)
    table = table.slice(start - bounds[groups[0]], stop - start)
    table = table.append_column(shard_assembly.MANIFEST_ROW, pa.array(range(start, stop), pa.int64()))
    if descriptor["only_keys"]:
        table = table.filter(pc.is_in(table["key"], pa.array(json.loads(descriptor["only_keys"]), pa.string())))
    rows = table.to_pylist()
    root = Path(manifest_path).resolve().parent
    for row in rows:
        row["shard"] = int(descriptor["shard"])
        row["lq_uri"] = manifest.resolve_uri(row["lq_uri"], root)
        row["gt_uri"] = manifest.resolve_uri(row["gt_uri"], root) if row["gt_uri"] else ""
        row["gt_sha256"] = row["gt_sha256"] or ""
        row["seed"] = -1 if row["seed"] is None else row["seed"]
    return rows


def read_descriptor_rows(batch: dict[str, Any], manifest_path: str) -> pa.Table:
    """``read_shard_rows`` over a numpy batch of descriptors, as a table (for ``map_batches``)."""
    rows = []
    for i in range(len(batch["shard"])):
        rows += read_shard_rows({k: v[i] for k, v in batch.items()}, manifest_path)
    return pa.Table.from_pylist(rows)


@dataclass(frozen=True)
class Step:
    """One stage of extraction: its name in ``config.stages``, the function or actor class of
    ``pipeline.stages`` that runs it, and the arguments it is built or called with. A stage that
    builds its own part of the graph (Ray Data LLM's processor) is ``on_dataset``: called with the
    dataset and its resources, it returns the dataset with its columns added."""

    name: str
    fn: Any
    actor: bool
    kwargs: dict
    on_dataset: bool = False

    def build(self) -> Callable[[dict], dict]:
        """The callable that runs this stage on a batch (an actor class is constructed: its model
        loads here)."""
        return self.fn(**self.kwargs) if self.actor else functools.partial(self.fn, **self.kwargs)


class StageChain:
    """Consecutive stages run in turn inside one actor, each on batches of its own size.

    Ray Data fuses consecutive task stages into one, but never actor pools: five pools on a CPU
    node hand every block from pool to pool through the object store and share the cores among
    five processes whose loads differ. A chain instead takes each block through all of its stages
    where it is, in a pool (``stages.cpu``) sized to the CPUs that should run them: data
    parallelism, as a plain loop per core would do it. Stages that ask for a GPU keep their own
    pools."""

    def __init__(self, steps: list[Step], batch_sizes: list[int]) -> None:
        self.parts = [(step.build(), size) for step, size in zip(steps, batch_sizes)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for run, size in self.parts:
            n = len(batch["key"])
            if n <= size:
                batch = run(batch)
                continue
            chunks = [run({k: v[i:i + size] for k, v in batch.items()}) for i in range(0, n, size)]
            batch = {k: [x for chunk in chunks for x in chunk[k]] for k in chunks[0]}
        return batch


def chain_cpu_steps(steps: list[Step], config: ExtractConfig) -> list[Step]:
    """``steps`` with every run of two or more consecutive stages that ask for no GPU, one of them
    an actor, replaced by one ``StageChain`` step named ``cpu`` (its resources:
    ``config.stages.cpu``). Runs of plain functions are left to Ray Data, which fuses them itself."""
    out: list[Step] = []
    run: list[Step] = []

    def close() -> None:
        if len(run) > 1 and any(s.actor for s in run):
            sizes = [getattr(config.stages, s.name).batch_size for s in run]
            out.append(Step(CHAIN, StageChain, True, {"steps": list(run), "batch_sizes": sizes}))
        else:
            out.extend(run)
        run.clear()

    for step in steps:
        if step.on_dataset or getattr(config.stages, step.name).num_gpus:
            close()
            out.append(step)
        else:
            run.append(step)
    close()
    return out


def pools(steps: list[Step], config: ExtractConfig) -> list[Step]:
    """The steps as Ray Data runs them: consecutive CPU-only stages as one chain when
    ``config.chain_cpu_stages`` is on."""
    return chain_cpu_steps(steps, config) if config.chain_cpu_stages else steps


def joins_io(step: Step) -> bool:
    """Whether ``step`` is a plain function, which Ray Data fuses with its neighbours of the same
    CPUs: the writing after it runs inside its tasks (and the reading before it, when every step
    is plain)."""
    return not (step.actor or step.on_dataset)


def io_task_cpus(node_cpus: list[float], steps: list[Step], config: ExtractConfig) -> float:
    """CPUs reserved by each task that reads manifest rows, writes parts or assembles a shard on
    its own (not inside a plain stage's tasks: ``joins_io``).

    These tasks only move bytes, but every one running at once needs a worker process of its own:
    at a quarter CPU each, a 2-core machine started four more processes (about a second of CPU
    apiece) while the stage actors imported torch, and the actors took 7.4–8.5 s to build instead
    of 5.5. So beside actor pools a task takes a whole CPU, where the largest node keeps one free
    beside every actor at its pool's largest size (a task that can never be placed would stall the
    run for good). Without actor pools, or without room, it takes the decode stage's share, as the
    plain stages do: among quarter-CPU tasks a whole-CPU one waits for four to end (assembling
    100k light rows took 191 s instead of 112), and never more than the room left. A vLLM stage
    builds actor pools of its own whose CPUs its config does not state: the share, too."""
    planned = pools(steps, config)
    share = config.stages.decode.num_cpus
    held = 0.0
    for step in planned:
        if not joins_io(step):
            res = getattr(config.stages, step.name)
            held += res.num_cpus * (res.max_concurrency or res.concurrency)
    room = max(node_cpus, default=0.0) - held
    if held and room >= 1.0 and not any(step.on_dataset for step in planned):
        return 1.0
    return min(share, room) if room > 0 else share


def stage_plan(config: ExtractConfig, models: Any) -> list[Step]:
    """The stages a preset runs, in order: components a preset leaves out are skipped (no MLLM:
    the analysis's sentence is the degradation text; no diffusion: no reference)."""
    steps = [Step("decode", stages.decode_batch, False, {"max_pixels": config.max_pixels}),
             Step("analysis", stages.AnalysisStage, True, {})]
    if models.mllm is not None and models.mllm.engine == presets.VLLM:
        steps.append(Step("describer", mllm_vllm.add_stage, False, {"settings": models.mllm,
                                                                    "use_hint": config.analysis_hint}, True))
    elif models.mllm is not None:
        # The describer's actors caption too: one copy of the MLLM answers both questions.
        steps.append(Step("describer", stages.MLLMStage, True, {"settings": models.mllm,
                                                                "use_hint": config.analysis_hint}))
    else:
        steps.append(Step("describer", stages.analysis_text, False, {}))
    if config.reference and models.diffusion is not None:
        steps.append(Step("reference", stages.ReferenceStage, True, {"settings": models.diffusion}))
    if models.clip is not None or models.text is not None:
        steps.append(Step("clip", stages.EmbedStage, True, {"models": models}))
    return steps


# Ray Data holds ~11 KB in the driver for every block (bench/RESULTS.md, extract_scale): past this
# many blocks, blocks grow (up to a shard each) instead of the driver.
MAX_BLOCKS = 20_000


def block_rows(work: list[ShardWork], rows_per_block: int) -> int:
    """The rows per block of this run: ``rows_per_block``, or more where the run would cut more than
    ``MAX_BLOCKS`` blocks: each shard then gets an equal share of them (10M rows in shards of 1,000:
    two blocks of 500, ~220 MB of driver memory instead of 3.4 GB). A block never spans shards, so
    beyond ``MAX_BLOCKS`` shards a shard is one block."""
    if not work:
        return rows_per_block
    per_shard = max(1, MAX_BLOCKS // len(work))
    return max(rows_per_block, -(-max(w.stop - w.start for w in work) // per_shard))


def block_descriptors(work: list[ShardWork], rows_per_block: int) -> list[dict[str, Any]]:
    """The blocks the stages pass along: each shard's range cut into pieces of ``rows_per_block``
    rows (a retried shard, whose failed keys are few, stays one piece). A block moves from stage to
    stage as a unit, so a whole shard per block would leave every stage but one idle until it is
    done whenever shards are few, and hold a shard's decoded pixels in the object store at once."""
    pieces = []
    for w in work:
        only = json.dumps(list(w.only_keys)) if w.only_keys else ""
        step = w.stop - w.start if w.only_keys else rows_per_block
        pieces += [{"shard": w.shard, "start": start, "stop": min(start + step, w.stop), "only_keys": only}
                   for start in range(w.start, w.stop, step)]
    return pieces


def build_dataset(work: list[ShardWork], manifest_path: str, out: Path, config: ExtractConfig, config_hash: str,
                  steps: list[Step], task_cpus: float):
    """The Ray Data graph over this run's shards and ``steps`` (lazy: nothing runs until iterated)."""
    import ray.data
    from ray.data import ActorPoolStrategy

    size = block_rows(work, config.rows_per_block)
    descriptors = block_descriptors(work, size)
    if size > config.rows_per_block or len(descriptors) > MAX_BLOCKS:
        print(f"blocks of up to {size} rows (rows_per_block={config.rows_per_block}): Ray Data holds ~11 KB in "
              f"the driver per block, and this run has {len(descriptors)} blocks"
              + (f" (a block never spans shards: raise --samples-per-shard above {config.samples_per_shard} "
                 f"for fewer)" if len(descriptors) > MAX_BLOCKS else ""))
    # One descriptor per block, in shard order: shards are read, processed and completed roughly in
    # order, so a run that stops early leaves whole shards behind rather than fragments of all.
    ds = ray.data.from_items(descriptors, override_num_blocks=len(descriptors))
    planned = pools(steps, config)
    if all(joins_io(s) for s in planned):
        # Only plain stages (bench/extract_scale.py's light pass): Ray Data fuses the reading, the
        # stages and the writing into one task per bundle, so no block crosses the object store.
        ds = ds.map_batches(read_descriptor_rows, fn_kwargs={"manifest_path": manifest_path}, batch_size=1,
                            batch_format="numpy", num_cpus=getattr(config.stages, planned[0].name).num_cpus)
    else:
        # With an actor pool, a task of its own. A map_batches would be fused into the plain stages
        # after it and on into the first pool of the same CPUs, which then bundles its batch size
        # in *descriptors* (16 descriptors of 32 rows: one call of 512 rows, on one actor while
        # the others idle). A flat_map that changes the row count is never fused into a stage
        # that asks for a batch size, and it hands on only manifest rows.
        ds = ds.flat_map(read_shard_rows, fn_kwargs={"manifest_path": manifest_path}, num_cpus=task_cpus)
    # Ray Data's high-memory note ("Operator ... uses N of memory per worker ... consider setting
    # memory=...") fires for any actor above ~2.6 GiB per CPU it reserves: with a quarter CPU per
    # stage every model actor passes that, as it must to hold its weights, and `memory=` is no
    # setting of this program. Off for this dataset (and those built from it) only.
    ds.context.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1

    def run(ds, fn, res: StageResources, actor: bool, **kwargs):
        options: dict[str, Any] = {"batch_size": res.batch_size, "batch_format": "numpy", "num_cpus": res.num_cpus}
        if res.num_gpus:
            options["num_gpus"] = res.num_gpus
        if actor:
            # No more actors than blocks: a retry of a few rows would start (and load models in)
            # actors that never get a block.
            pool = {k: min(v, len(descriptors)) for k, v in res.actor_pool().items()}
            return ds.map_batches(fn, fn_constructor_kwargs=kwargs, compute=ActorPoolStrategy(**pool), **options)
        return ds.map_batches(fn, fn_kwargs=kwargs, **options)

    for step in planned:
        resources = getattr(config.stages, step.name)
        if step.on_dataset:
            ds = step.fn(ds, resources=resources, **step.kwargs)
        else:
            ds = run(ds, step.fn, resources, step.actor, **step.kwargs)
    # The parts are written where the rows are (fused into the last stage when that is a plain
    # one: the same CPUs); only status rows go on to the driver.
    last = getattr(config.stages, planned[-1].name)
    return ds.map_batches(shard_assembly.write_parts, fn_kwargs={"out": str(out), "config_hash": config_hash},
                          batch_size=config.stages.decode.batch_size, batch_format="numpy",
                          num_cpus=last.num_cpus if joins_io(planned[-1]) else task_cpus)


@dataclass
class Totals:
    ok: int = 0
    failed: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors: list[str] = field(default_factory=list)

    def add(self, row: dict) -> None:
        for stage in STAGE_NAMES:
            self.stage_seconds[stage] += float(row.get(f"t_{stage}", 0.0) or 0.0)
        if row[stages.ERROR]:
            self.failed += 1
            if len(self.errors) < 20:
                self.errors.append(f"{row['key']}: {row[stages.ERROR]}")
        else:
            self.ok += 1


def model_commits(config: ExtractConfig) -> dict[str, str]:
    """The commit each model of the run will load (``sources.preset_commits``), resolved before any
    work: they are part of the output hash, so a model that is neither pinned nor cached — whose
    commit would only be known once a worker downloads it — is refused here."""
    from pipeline.models.sources import hub_cache_dir, preset_commits

    commits = preset_commits(config.resolved_models())
    if not config.reference:
        commits.pop("diffusion", None)
    missing = sorted(c for c, v in commits.items() if v is None)
    if missing:
        raise ExtractError(f"preset {config.preset!r}: {', '.join(missing)} is neither pinned to a commit nor in the "
                           f"Hub cache {hub_cache_dir()}; set models.<component>.revision to a commit, or download "
                           f"it first")
    return commits


def run_identity(config: ExtractConfig, manifest_path: str) -> tuple[dict[str, str], str]:
    """The commits the run's models resolve to and the output hash they enter (with the config and
    the manifest's bytes): what decides whether an ``--out`` folder's shards can be resumed."""
    commits = model_commits(config)
    return commits, config.output_hash(sha256_file(manifest_path), commits)


def pinned_models(config: ExtractConfig, commits: dict[str, str]) -> Any:
    """The preset's models, each Hub model at the commit resolved for the hash: workers load exactly
    those weights even if a branch moves during the run."""
    from pipeline.models import presets
    from pipeline.models.sources import COMMIT

    return presets.with_overrides(config.resolved_models(), {
        f"{c}.revision": v for c, v in commits.items() if COMMIT.fullmatch(v)})


def _check_config(out: Path, config: ExtractConfig, config_hash: str, manifest_path: str,
                  commits: dict[str, str]) -> None:
    saved = out / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous.get("output_hash") != config_hash:
            moved = [f"{c} was {previous['commits'][c]} and is now {commits[c]}"
                     for c in sorted(set(commits) & set(previous.get("commits") or {}))
                     if previous["commits"][c] != commits[c]]
            if moved:
                raise ExtractError(f"{out} holds shards made with other model weights ({'; '.join(moved)}); pin "
                                   f"models.<component>.revision to the earlier commit to resume, or use a new --out")
            raise ExtractError(f"{out} holds shards of another configuration or manifest (hash "
                               f"{previous.get('output_hash')}, this run {config_hash}); use a new --out folder, "
                               f"or the same settings to resume")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"output_hash": config_hash, "manifest": str(manifest_path), "commits": commits,
                                 **config.to_dict()}, indent=1, sort_keys=True, default=str))


def _check_installed(config: ExtractConfig) -> None:
    """Fail in the driver, with the fix, when the sentence encoder's package or vLLM is missing:
    inside a Ray actor the same error would surface as a failed actor pool."""
    models = config.resolved_models()
    if models.mllm is not None and models.mllm.engine == presets.VLLM and not mllm_vllm.installed():
        raise ExtractError(f"models.mllm.engine is {presets.VLLM}, and vllm is not installed here: "
                           f"pip install 'ray[llm]' (or set models.mllm.engine=transformers)")
    text = models.text
    if text is None:
        return
    # From sources, not the encoder's module: that one imports torch, which a driver running the
    # offline preset does not otherwise load.
    from pipeline.models.sources import resolve_folder

    try:
        resolve_folder(text.model)
    except OSError as e:
        raise ExtractError(f"preset {config.preset!r}: {e}") from e


def _job_working_dir() -> str | None:
    """The working dir a Ray job was submitted with (``--working-dir``), when this is such a job:
    its entrypoint then runs in a temporary copy of that folder."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job:
        return None
    try:
        return (json.loads(job).get("runtime_env") or {}).get("working_dir")
    except ValueError:
        return None


def check_paths(manifest_path: str, out_dir: str) -> None:
    """Refuse relative paths in a job with a working dir: they would name files in the job's
    temporary copy of it, which no other node sees and which is deleted with the job — output
    written there "succeeds" and is lost."""
    if _job_working_dir() is None:
        return
    for flag, path in (("--manifest", manifest_path), ("--out", out_dir)):
        if not Path(path).is_absolute():
            raise ExtractError(f"{flag} {path} is relative, and this Ray job runs in a temporary copy of its "
                               f"--working-dir: give an absolute path on storage every node can read and write")


def writer_nodes() -> list[str]:
    """The live nodes with CPUs, where shards are assembled."""
    import ray

    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)


def extract(manifest_path: str, out_dir: str, config: ExtractConfig, retry_failed: bool = False,
            address: str | None = None, num_cpus: int | None = None, steps: list[Step] | None = None) -> dict:
    """Run the extraction; returns the index written (``index.json``). ``steps`` replace the
    preset's stages (``stage_plan``): benchmarks of the pipeline itself run lighter ones."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check_paths(manifest_path, out_dir)
    out = Path(out_dir)
    num_rows = manifest.count_rows(manifest_path)
    _check_installed(config)
    commits, config_hash = run_identity(config, manifest_path)
    _check_config(out, config, config_hash, manifest_path, commits)
    work, shard_count = plan_work(num_rows, out, config.samples_per_shard, retry_failed)
    todo_rows = sum(w.rows for w in work)
    print(f"{num_rows} manifest rows in {shard_count} shards; {todo_rows} rows to process "
          f"in {len(work)} shards, {shard_count - len(work)} shards already complete")
    # Parts of an interrupted run: their shards are processed again from the start.
    shutil.rmtree(out / shard_assembly.PARTS, ignore_errors=True)
    totals = Totals()
    start = time.time()
    if work:
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus if not address else None, log_to_driver=False)
        steps = steps or stage_plan(config, pinned_models(config, commits))
        task_cpus = io_task_cpus([n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]], steps, config)
        assemble = ray.remote(num_cpus=task_cpus)(shard_assembly.assemble)
        writers = writer_nodes()
        by_shard = {w.shard: w for w in work}
        remaining = {w.shard: w.rows for w in work}
        running: list = []

        def report(ready: list) -> None:
            for stats in ray.get(ready):
                print(f"shard {stats['name']}: {stats['samples']} ok, {stats['failed']} failed, "
                      f"{stats['bytes']} bytes")

        for row in build_dataset(work, manifest_path, out, config, config_hash, steps, task_cpus).iter_rows():
            totals.add(row)
            shard = int(row["shard"])
            remaining[shard] -= 1
            if remaining[shard] == 0:
                del remaining[shard]
                # Shards take turns over the nodes: their writes spread over the cluster's disks and
                # network, whatever the load (Ray's SPREAD placed them all on one busy node). Soft:
                # a node that has gone away leaves its turn to another.
                node = writers[shard % len(writers)]
                running.append(assemble.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True))
                               .remote(str(out), shard, config_hash, by_shard[shard].retried))
            ready, running = ray.wait(running, num_returns=len(running), timeout=0) if running else ([], [])
            report(ready)
        report(running)
        if remaining:
            raise RuntimeError(f"shards {sorted(remaining)[:10]} did not receive all their rows; rerun to resume")
        # Each assembly removed its shard's parts: only their empty parent is left.
        parts = out / shard_assembly.PARTS
        if parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
    elapsed = time.time() - start
    models = config.resolved_models()
    all_stats = [shards.read_stats(out, i) for i in range(shard_count)]
    header = {"preset": config.preset, "config_hash": config_hash,
              "models": next((st["models"] for st in all_stats if "models" in st), {}),
              "settings": models.settings_summary(),
              "embedding_dims": next((st["embedding_dims"] for st in all_stats if "embedding_dims" in st), {})}
    index = shards.write_index(out, Path(out).name, shard_count, header)
    print(summary(index, totals, elapsed, todo_rows))
    return index


def summary(index: dict, totals: Totals, elapsed: float, processed: int) -> str:
    lines = ["== extraction summary ==",
             f"dataset: {index['samples']} ok + {index['failed']} failed = {index['samples'] + index['failed']} rows "
             f"in {len(index['shards'])} shards",
             f"this run: {totals.ok} ok, {totals.failed} failed of {processed} rows in {elapsed:.1f} s"
             + (f" ({processed / elapsed:.2f} samples/s)" if processed and elapsed > 0 else "")]
    if processed:
        total_stage = sum(totals.stage_seconds.values()) or 1.0
        lines.append("time per stage (summed over workers, per sample): " + ", ".join(
            f"{s} {totals.stage_seconds[s] / processed * 1000:.0f} ms ({totals.stage_seconds[s] / total_stage:.0%})"
            for s in STAGE_NAMES if s in totals.stage_seconds))
    for e in totals.errors:
        lines.append(f"  failed: {e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="dataset manifest parquet (pipeline.manifest)")
    ap.add_argument("--out", required=True, help="output folder for shards, status, stats and index.json")
    ap.add_argument("--preset", default=None,
                    help="model preset: offline, tiny, default or quality (default: tiny; see pipeline/models/presets.py)")
    ap.add_argument("--config", default=None, help="YAML extraction config (see pipeline/extract_config.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. stages.describer.num_gpus=1 or models.mllm.max_new_tokens=32")
    ap.add_argument("--samples-per-shard", type=int, default=None,
                    help="samples per shard (default 256); part of the output hash, so keep it to resume")
    ap.add_argument("--retry-failed", action="store_true", help="re-process only rows whose status is error")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {k: v for k, v in (("preset", args.preset), ("samples_per_shard", args.samples_per_shard)) if v is not None}
    try:
        config = extract_config.load(args.config, typed_config.parse_sets(args.set), **fields)
        index = extract(args.manifest, args.out, config, args.retry_failed, args.address, args.num_cpus)
    # ValueError: an unreadable manifest or config file, an unknown preset or setting; OSError: an
    # output folder that cannot be written.
    except (ExtractError, ValueError, OSError) as e:
        return cli.fail(e)
    except KeyboardInterrupt:
        done = len(shards.completed(args.out)) if Path(args.out).is_dir() else 0
        return cli.interrupted(f"{done} shards are complete in {args.out} and kept (each has its _stats.json); "
                               "rerun the same command to resume: complete shards are skipped")
    return 0 if index["samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
