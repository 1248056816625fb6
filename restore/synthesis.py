"""Training pairs made on the fly from clean photos: a fresh degradation for every crop.

The all-in-one papers draw new noise for every crop instead of storing degraded copies; lmdir does
the same for every synthetic degradation (``pipeline.degrade`` specs: noise, JPEG, blur, haze, low
light, rain, snow and their mixtures). A crop is cut from a clean photo, flipped and turned, then
degraded, so rain stays near vertical as it falls in real photos. Its priors are then computed
from the degraded crop by the same code inference uses (``restore.priors_online``): the
weight-free analysis, its sentence and the sentence's tokens — never noise or random text. With
probability ``instruction_rate`` the crop is instead guided as a user naming its true types
guides ``restore.infer --degradation``: the analysis's sentence for those types and a degradation
vector of them (``priors_online``), so the restorer learns to follow types the analysis missed.

Everything is a pure function of the seed it is given: the photo, the crop, the degradation and
the text. Photos are split into training and validation by a hash of their name, so the split
does not depend on the folder's order or on where it lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import degrade, vocabulary
from pipeline.image_files import ImageError, images_in, load_rgb
from pipeline.sample_format import Sample
from restore.priors_online import OnlinePriors, UserPriors

# Photos whose name hashes below this share of 100 are validation photos, never cropped for training.
VALIDATION_PERCENT = 3


@dataclass(frozen=True)
class SynthesisConfig:
    """Clean photo folders and the degradations drawn from them, with their weights."""

    photos: tuple[str, ...] = ()  # folders of clean photos (train/CBSD365, DIV2K, your own)
    tasks: dict[str, float] = field(default_factory=dict)  # degradation spec -> relative weight
    kernels: str = ""  # npz of blur kernels for kernel-blur specs (never a test set's kernels)
    instruction_rate: float = 0.0  # share of samples guided by their true types, as a user's words guide
    prior_preset: str = "offline"  # how the priors of a degraded crop are computed
    # The degradation is drawn and the priors measured on a window of this many pixels around the
    # training crop: the analysis needs more than a small crop to tell rain from texture (at
    # inference it sees the whole photo), and costs the same on 64 or 128 pixels.
    analysis_window: int = 128
    validation_per_task: int = 2  # validation photos per task
    # Validation restores the central window of this size of each photo (0: the whole photo):
    # a whole photo takes seconds per restoration on a CPU, and validation runs many times.
    validation_size: int = 256

    @property
    def enabled(self) -> bool:
        return bool(self.photos and self.tasks)

    def check(self) -> None:
        """Raise ValueError naming the bad spec, weight or folder."""
        for spec, weight in self.tasks.items():
            degrade.parse_spec(spec)
            if not weight > 0:
                raise ValueError(f"synthesis.tasks[{spec!r}]: weight must be > 0, got {weight}")
        for folder in self.photos:
            if not Path(folder).is_dir():
                raise ValueError(f"synthesis.photos: {folder} is not a folder")
        if not 0.0 <= self.instruction_rate <= 1.0:
            raise ValueError(f"synthesis.instruction_rate {self.instruction_rate} outside [0, 1]")


def is_validation(path: Path) -> bool:
    """Whether a photo belongs to the validation split (a hash of its folder and file name)."""
    return degrade.seed_for(f"{path.parent.name}/{path.name}") % 100 < VALIDATION_PERCENT


def list_photos(folders: tuple[str, ...], validation: bool) -> list[Path]:
    """The photos of one split, in a fixed order."""
    photos = sorted({p for folder in folders for p in images_in(folder)})
    chosen = [p for p in photos if is_validation(p) == validation]
    if not chosen:
        raise ValueError(f"no {'validation' if validation else 'training'} photos in {', '.join(folders)}")
    return chosen


def task_of(spec: str) -> str:
    """The task name of a degradation spec ("denoise", "dejpeg", "denoise+dejpeg", ...)."""
    return vocabulary.task_for(degrade.types_of(spec))


class Synthesizer:
    """Makes degraded crops with their priors; one per DataLoader worker (models load once)."""

    def __init__(self, config: SynthesisConfig):
        config.check()
        self.config = config
        self.specs = list(config.tasks)
        weights = np.asarray([config.tasks[s] for s in self.specs], np.float64)
        self.weights = weights / weights.sum()
        self.photos = list_photos(config.photos, validation=False)
        self._pixels: dict[Path, np.ndarray] = {}
        self._priors: OnlinePriors | None = None

    @property
    def priors(self) -> OnlinePriors:
        if self._priors is None:
            self._priors = OnlinePriors(self.config.prior_preset)
        return self._priors

    def photo(self, path: Path) -> np.ndarray:
        # Decoded photos are kept: a few hundred photos fit in memory, decoding each crop's photo
        # again would cost more than degrading it.
        if path not in self._pixels:
            self._pixels[path] = load_rgb(str(path)).pixels
        return self._pixels[path]

    def sample(self, seed: int, crop: int) -> Sample:
        """One degraded crop with its priors, all drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        spec = self.specs[int(rng.choice(len(self.specs), p=self.weights))]
        path = self.photos[int(rng.integers(len(self.photos)))]
        try:
            clean = self.photo(path)
        except ImageError as e:
            raise ValueError(f"synthesis photo {path}: {e.reason}") from e
        clean = augment(random_crop(clean, max(crop, self.config.analysis_window), rng), rng)
        lq, applied = degrade.apply(clean, spec, int(rng.integers(2**31)), self.config.kernels)
        types = degrade.types_of(spec)
        user = UserPriors(types=tuple(types)) if rng.random() < self.config.instruction_rate else UserPriors()
        sample = self.priors.sample(f"synth-{seed}", lq, user=user, gt=clean, dataset="synthetic",
                                    split="train", task=task_of(spec))
        sample.meta.degradations = applied
        # The training crop: one window of the degraded and clean pixels, the priors of the whole.
        y, x = (int(rng.integers(0, n - crop + 1)) for n in lq.shape[:2])
        sample.lq, sample.gt = (np.ascontiguousarray(a[y:y + crop, x:x + crop]) for a in (lq, clean))
        sample.meta.width = sample.meta.height = crop
        return sample


def random_crop(pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` × ``size`` window (the photo padded symmetrically when smaller)."""
    h, w = pixels.shape[:2]
    if h < size or w < size:
        pixels = np.pad(pixels, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="symmetric")
        h, w = pixels.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return pixels[y:y + size, x:x + size]


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A horizontal flip and a turn by a multiple of 90°, applied to the clean crop."""
    out = np.rot90(pixels, int(rng.integers(0, 4)))
    if rng.integers(0, 2):
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` × ``size`` window (each side capped at the image's; 0: all of it)."""
    if size <= 0:
        return pixels
    h, w = pixels.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(pixels[y:y + size, x:x + size])


def validation_samples(config: SynthesisConfig, priors: OnlinePriors) -> list[Sample]:
    """Validation photos (central windows), each task applied to ``validation_per_task`` of them with fixed seeds:
    the same set in every run of the same config, balanced over tasks."""
    photos = list_photos(config.photos, validation=True)
    samples = []
    for t, spec in enumerate(config.tasks):
        for i in range(config.validation_per_task):
            path = photos[(t * config.validation_per_task + i) % len(photos)]
            clean = center_crop(load_rgb(str(path)).pixels, config.validation_size)
            seed = degrade.seed_for(f"validation/{spec}/{path.name}")
            lq, applied = degrade.apply(clean, spec, seed, config.kernels)
            sample = priors.sample(f"val-{t}-{i}", lq, gt=clean, dataset="synthetic", split="val",
                                   task=task_of(spec))
            sample.meta.degradations = applied
            samples.append(sample)
    return samples
