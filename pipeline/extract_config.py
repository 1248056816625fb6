"""The configuration of an extraction run, in one typed place.

Defaults here; a YAML file (``--config``) and ``--set section.field=value`` flags override them.
The resolved configuration is written next to the shards, and its output-relevant part is hashed:
a rerun into the same folder with a different hash is refused rather than mixing priors of two
configurations in one dataset.

Example YAML for a GPU cluster (``manifests/configs/extract_gpu.yaml`` is the one the KubeRay job
runs): each model stage's actor pool starts with ``concurrency`` actors and grows to
``max_concurrency`` while rows queue up for it. ``describer`` is the MLLM stage, which captions
too::

    preset: default
    samples_per_shard: 1024
    stages:
      describer: {num_gpus: 1, batch_size: 16, concurrency: 2, max_concurrency: 4}
      reference: {num_gpus: 1, batch_size: 8, concurrency: 1, max_concurrency: 3}
      clip:      {num_gpus: 0.5, batch_size: 64, concurrency: 1, max_concurrency: 2}
    models:
      mllm: {max_new_tokens: 64}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline import typed_config
from pipeline.image_files import MAX_PIXELS
from pipeline.models import presets
from pipeline.sample_format import FORMAT_VERSION


@dataclass(frozen=True)
class StageResources:
    """How one Ray Data stage runs: rows per call, actors in its pool, resources per actor."""

    batch_size: int = 4
    # A model stage's pool holds `concurrency` actors or, with `max_concurrency` set, autoscales
    # between the two: on an autoscaling cluster Ray Data then asks for the nodes that the actors it
    # adds need, so a job can start on the GPUs the minimum needs.
    concurrency: int = 1
    max_concurrency: int | None = None
    num_gpus: float = 0.0
    num_cpus: float = 0.25

    def actor_pool(self) -> dict[str, int]:
        """Keyword arguments of this stage's ``ray.data.ActorPoolStrategy``."""
        if self.max_concurrency is None:
            return {"size": self.concurrency}
        return {"min_size": self.concurrency, "max_size": self.max_concurrency}


# Every stage reserves a quarter CPU by default. On a GPU node the GPU is a model actor's real
# resource; on a small CPU machine, whole-CPU reservations for six stages cannot all be placed at
# once and the streaming executor stalls waiting for the last actor pool (seen on 2 cores).
@dataclass(frozen=True)
class Stages:
    decode: StageResources = StageResources(batch_size=16)
    analysis: StageResources = StageResources(batch_size=16)
    # The MLLM stage: its actors describe the degradation and caption the scene.
    describer: StageResources = StageResources()
    reference: StageResources = StageResources()
    clip: StageResources = StageResources(batch_size=16)
    # Consecutive stages that ask for no GPU, run in turn by one pool (ExtractConfig.chain_cpu_stages):
    # each actor takes a block through all of them, each stage on its own batch_size. Size the pool
    # to the CPUs that should run them (the default: a 2-core machine); on a cluster, e.g.
    # {concurrency: 8, max_concurrency: 64}.
    cpu: StageResources = StageResources(batch_size=16, concurrency=2)

    # A config written for an earlier layout names these; it is refused with the reason.
    RETIRED: ClassVar[dict[str, str]] = {
        "captioner": "the captioner runs in the describer's actors (one MLLM answers both questions); "
                     "give its GPUs to stages.describer and remove stages.captioner",
    }


@dataclass(frozen=True)
class ExtractConfig:
    preset: str = "tiny"
    samples_per_shard: int = 256
    # Manifest rows per Ray Data block (pipeline.extract.block_descriptors): what moves from stage
    # to stage. Not part of the output: shards hold the same bytes whatever the blocks.
    rows_per_block: int = 32
    # Render a diffusion reference for every sample (the most expensive stage; off = no ref.png).
    reference: bool = True
    # Put the weight-free analysis's sentence into the describer's prompt as a hint to check.
    analysis_hint: bool = True
    max_pixels: int = MAX_PIXELS
    # Run consecutive CPU-only stages in one actor pool (stages.cpu) instead of a pool each
    # (pipeline.extract.StageChain). Not part of the output: the same rows go through the same calls.
    chain_cpu_stages: bool = True
    stages: Stages = Stages()
    # Overrides of the preset's model settings, nested as {"mllm": {"max_new_tokens": 32}}.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolved_models(self) -> presets.Preset:
        return presets.with_overrides(presets.preset(self.preset), self.models)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolved_models"] = presets.as_dict(self.resolved_models())
        return d

    def output_hash(self, manifest_sha256: str, commits: Mapping[str, str | None] | None = None) -> str:
        """Hash of everything that changes the bytes written (not the resources used to write them).

        ``commits`` (``pipeline.models.sources.preset_commits``) are the weights the models load:
        a preset names a model and maybe a branch, whose commit can move between two runs.
        """
        relevant = {
            "format_version": FORMAT_VERSION, "manifest": manifest_sha256,
            "samples_per_shard": self.samples_per_shard, "reference": self.reference,
            "analysis_hint": self.analysis_hint, "max_pixels": self.max_pixels,
            "models": presets.as_dict(self.resolved_models()),
        }
        if commits is not None:
            relevant["commits"] = dict(commits)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def load(path: str | None = None, sets: Mapping[str, str] | None = None, **fields: Any) -> ExtractConfig:
    """Defaults, then the YAML file at ``path``, then keyword fields, then dotted ``sets``."""
    config = typed_config.load(ExtractConfig(), path, sets, **fields)
    models = config.resolved_models()  # an unknown preset or model field fails here, before any work
    if config.rows_per_block < 1:
        raise ValueError(f"rows_per_block={config.rows_per_block}: a block holds at least one row")
    if models.mllm is not None:
        if models.mllm.engine not in presets.MLLM_ENGINES:
            raise ValueError(f"models.mllm.engine={models.mllm.engine!r}; choose one of "
                             f"{', '.join(presets.MLLM_ENGINES)}")
        if models.mllm.engine == presets.VLLM and models.mllm.num_beams != 1:
            raise ValueError(f"models.mllm.num_beams={models.mllm.num_beams}: beam search is not available with "
                             "models.mllm.engine=vllm; use num_beams: 1 or engine: transformers")
    for stage in dataclasses.fields(config.stages):
        res = getattr(config.stages, stage.name)
        if res.concurrency < 1 or (res.max_concurrency is not None and res.max_concurrency < res.concurrency):
            raise ValueError(f"stages.{stage.name}: an actor pool of {res.concurrency} to {res.max_concurrency} "
                             "actors; concurrency must be at least 1 and max_concurrency (if set) at least concurrency")
    return config
