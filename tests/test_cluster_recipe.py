"""The shipped cluster recipe schedules: the KubeRay job (docker/kuberay-rayjob.yaml) runs an
extraction config whose actor pools fit its GPU workers, in the image built by
docker/Dockerfile.ray-worker, with a memory-backed /dev/shm for Ray's object store on every pod.

Read from the files as shipped; nothing here needs a cluster."""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from pipeline import extract_config
from pipeline.extract_config import StageResources, Stages

REPO = Path(__file__).resolve().parents[1]
RAYJOB = REPO / "docker" / "kuberay-rayjob.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile.ray-worker"


def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def repo_path_in_image(image_path: str) -> Path:
    """The repository file that the worker image holds at ``image_path``: the Dockerfile's WORKDIR
    plus a folder it copies there (``COPY manifests ./manifests``)."""
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines()]
    workdir = next(PurePosixPath(words[1]) for words in lines if words[:1] == ["WORKDIR"])
    copied = {words[1] for words in lines if words[:1] == ["COPY"] and len(words) == 3
              and words[2] == f"./{words[1]}"}
    relative = PurePosixPath(image_path).relative_to(workdir)
    assert relative.parts[0] in copied, f"the image does not copy {relative.parts[0]}/ into {workdir}"
    return REPO / relative


def entrypoint_config() -> Path:
    """The repository file the job's ``--config`` names."""
    args = shlex.split(rayjob()["spec"]["entrypoint"])
    assert args[:3] == ["python", "-m", "pipeline.extract"], args
    return repo_path_in_image(args[args.index("--config") + 1])


def gpus_needed(stages: Stages, at: str, gpus_per_pod: int) -> int:
    """GPUs the actor pools hold at their minimum (``at="min"``) or maximum size: whole-GPU actors
    take their GPUs; fractional ones share a GPU with actors of their own pool only (a bound that
    any placement meets)."""
    total = 0
    for stage in dataclasses.fields(stages):
        name, res = stage.name, getattr(stages, stage.name)
        if not res.num_gpus:
            continue
        pool = res.actor_pool()
        actors = pool["size"] if "size" in pool else pool[f"{at}_size"]
        assert res.num_gpus <= gpus_per_pod, f"a {name} actor asks {res.num_gpus} GPUs; a pod has {gpus_per_pod}"
        if res.num_gpus >= 1:
            assert res.num_gpus == int(res.num_gpus), f"{name}: {res.num_gpus} GPUs cannot be placed"
            total += actors * int(res.num_gpus)
        else:
            total += math.ceil(actors / math.floor(1 / res.num_gpus))
    return total


def gpu_group() -> tuple[dict, int]:
    """The job's one GPU worker group and the GPUs of each of its pods."""
    groups = rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu = [(g, int(c["resources"]["limits"]["nvidia.com/gpu"])) for g in groups
           for c in g["template"]["spec"]["containers"] if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    assert len(gpu) == 1, "the recipe has one GPU worker group"
    return gpu[0]


def test_the_job_runs_the_gpu_config_the_image_holds():
    path = entrypoint_config()
    assert path == REPO / "manifests" / "configs" / "extract_gpu.yaml" and path.is_file()
    config = extract_config.load(str(path))  # as the job's driver reads it: unknown fields fail here
    assert config.preset == "default"
    assert {s: getattr(config.stages, s).num_gpus for s in ("describer", "reference")} == {
        "describer": 1.0, "reference": 1.0}


def test_a_config_with_a_captioner_stage_is_refused_with_the_fix(tmp_path):
    # A config written when the captioner had its own actor pool is refused, saying where its GPUs
    # go now, whether the key comes from a YAML file or from --set.
    old = tmp_path / "old.yaml"
    old.write_text("stages:\n  describer: {num_gpus: 1}\n  captioner: {num_gpus: 1}\n")
    for load in (lambda: extract_config.load(str(old)),
                 lambda: extract_config.load(sets={"stages.captioner.batch_size": "3"})):
        with pytest.raises(ValueError, match=r"stages\.captioner: the captioner runs in the describer's actors"
                                             r".*give its GPUs to stages\.describer"):
            load()


def test_the_actor_pools_fit_the_gpu_workers():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    group, per_pod = gpu_group()
    stages = extract_config.load(str(entrypoint_config())).stages
    # The job starts on the workers it is created with: the pools at their minimum must fit them.
    assert gpus_needed(stages, "min", per_pod) <= group["replicas"] * per_pod
    if cluster.get("enableInTreeAutoscaling"):
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        # Ray Data grows the pools as far as the autoscaler can add workers.
        assert gpus_needed(stages, "max", per_pod) <= group["maxReplicas"] * per_pod
    else:
        assert gpus_needed(stages, "max", per_pod) <= group["replicas"] * per_pod
    # As shipped: 4 GPUs at the minimum on 4 workers, 8 at the maximum on up to 8.
    assert (gpus_needed(stages, "min", per_pod), gpus_needed(stages, "max", per_pod)) == (4, 8)


def test_the_recipe_this_replaced_did_not_fit():
    # Fixed pools of 2 + 2 + 3 + 0.5 GPUs (describer and captioner, now one MLLM pool of 4) on four
    # one-GPU workers, autoscaling off: the last pools wait for GPUs forever and the stream stalls.
    old = Stages(describer=StageResources(num_gpus=1, concurrency=4),
                 reference=StageResources(num_gpus=1, concurrency=3),
                 clip=StageResources(num_gpus=0.5, concurrency=1))
    assert gpus_needed(old, "min", 1) == 8 > 4


def test_every_pod_has_a_memory_backed_dev_shm():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    for name, spec in pods:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            shm = [m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert len(shm) == 1, f"{name}/{container['name']}: no volume at /dev/shm"
            assert volumes[shm[0]].get("emptyDir", {}).get("medium") == "Memory", f"{name}: /dev/shm is not in memory"


def test_pool_sizes_are_fixed_or_autoscaling_and_checked():
    assert StageResources(concurrency=3).actor_pool() == {"size": 3}
    assert StageResources(concurrency=1, max_concurrency=4).actor_pool() == {"min_size": 1, "max_size": 4}
    config = extract_config.load(sets={"stages.reference.max_concurrency": "3"})
    assert config.stages.reference.actor_pool() == {"min_size": 1, "max_size": 3}
    with pytest.raises(ValueError, match="stages.reference: an actor pool of 2 to 1 actors"):
        extract_config.load(sets={"stages.reference.concurrency": "2", "stages.reference.max_concurrency": "1"})
    with pytest.raises(ValueError, match="stages.clip: an actor pool of 0"):
        extract_config.load(sets={"stages.clip.concurrency": "0"})
