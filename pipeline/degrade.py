"""Synthetic degradations: seeded, deterministic (same seed, same bytes), reporting their parameters.

A degradation is named by a spec string: ``kind[:param=value,...]`` where a value is a number or a
range ``lo..hi`` sampled uniformly from the seed; ``+`` composes kinds (``rain+noise:sigma=10``).
Composed kinds are always applied in the physical order of KINDS (scene → optics → sensor →
codec), whatever the order written, so a spec means one thing.

OpenCV does the filtering and PIL's libjpeg the JPEG coding; the physically based models that
common augmentation libraries do not offer with their parameters reported — atmospheric
scattering haze, streak rain and layered snow (crisp or out of focus and translucent),
Poisson–Gaussian camera noise, spatially correlated sensor noise — are written here.
Gaussian noise follows the all-in-one papers: float image in [0,1] plus N(0, σ/255), clipped.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

Params = dict[str, float | int | str]


@dataclass(frozen=True)
class Kind:
    """One synthetic degradation: its vocabulary type, its function and its default ranges."""

    name: str
    type: str
    apply: Callable[..., tuple[np.ndarray, Params]]
    defaults: dict[str, tuple[float, float]] = field(default_factory=dict)


def seed_for(text: str) -> int:
    """A stable 31-bit seed from a string (a sample key), identical on every machine."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def _f(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)


def line_kernel(length: float, angle_deg: float, width: float = 1.0) -> np.ndarray:
    """Normalised straight kernel of ``length`` × ``width`` pixels at ``angle_deg`` (0 = horizontal)."""
    size = int(np.ceil(length)) | 1
    # Draw at 4x and downsample so fractional lengths and angles stay smooth.
    big = np.zeros((size * 4, size * 4), np.float32)
    c = size * 2
    dx, dy = np.cos(np.deg2rad(angle_deg)) * length * 2, -np.sin(np.deg2rad(angle_deg)) * length * 2
    cv2.line(big, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))),
             1.0, thickness=max(1, int(round(4 * width))), lineType=cv2.LINE_AA)
    k = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def disk_kernel(radius: float) -> np.ndarray:
    """Normalised anti-aliased disk (defocus) kernel."""
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r: r + 1, -r: r + 1].astype(np.float32)
    k = np.clip(radius + 0.5 - np.sqrt(x * x + y * y), 0.0, 1.0)
    return k / k.sum()


# --- scene: haze, rain, snow -------------------------------------------------------------------

def _depth_proxy(img: np.ndarray) -> np.ndarray:
    """Relative depth in [0,1] for a single photo with no depth map: far at the top of the frame
    and where the blurred scene is bright (sky), the two cues dark-channel dehazing relies on."""
    h, w = img.shape[:2]
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None].repeat(w, axis=1)
    lum = cv2.GaussianBlur(img.mean(axis=2), (0, 0), sigmaX=max(h, w) / 20)
    lum = (lum - lum.min()) / max(float(lum.max() - lum.min()), 1e-6)
    d = 0.7 * ramp + 0.3 * lum
    return (d - d.min()) / max(float(d.max() - d.min()), 1e-6)


def haze(img: np.ndarray, rng: np.random.Generator, beta: float, airlight: float) -> tuple[np.ndarray, Params]:
    """Atmospheric scattering: I = J·t + A·(1−t), t = exp(−β·d) with d a depth proxy in [0,1]."""
    x = _f(img)
    t = np.exp(-beta * _depth_proxy(x))[..., None]
    tint = 1.0 + rng.uniform(-0.03, 0.03, size=3).astype(np.float32)
    a = np.clip(airlight * tint, 0.0, 1.0)
    out = x * t + a * (1.0 - t)
    return _u8(out), {"beta": beta, "airlight": airlight, "mean_transmission": round(float(t.mean()), 4)}


def _streaks(h: int, w: int, rng: np.random.Generator, density: float, length: float, angle: float,
             width: float) -> np.ndarray:
    seeds = (rng.random((h, w)) < density).astype(np.float32) * rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)
    layer = cv2.filter2D(seeds, -1, line_kernel(length, angle, width), borderType=cv2.BORDER_REFLECT)
    # The kernel sums to 1 over length × width pixels: scale back so a streak's brightness does
    # not depend on its size.
    return np.clip(layer * length * width * 0.6, 0.0, 1.0)


def _precipitation_layer(layer: np.ndarray, defocus: float, opacity: float) -> np.ndarray:
    """A rain or snow layer out of the focal plane (blurred by ``defocus`` px) and translucent
    (× ``opacity``): thin, faint streaks and flakes as most real photos hold, not crisp lines."""
    if defocus > 0:
        layer = cv2.GaussianBlur(layer, (0, 0), sigmaX=defocus)
    return layer * opacity


def rain(img: np.ndarray, rng: np.random.Generator, density: float, length: float, angle: float,
         intensity: float, defocus: float = 0.0, opacity: float = 1.0,
         width: float = 1.0) -> tuple[np.ndarray, Params]:
    """Rain streaks: sparse seeds smeared along a near-vertical line ``width`` px wide (nearer,
    larger drops leave wider streaks), screen-blended."""
    x = _f(img)
    h, w = x.shape[:2]
    layer = _precipitation_layer(_streaks(h, w, rng, density, length, angle, width) * intensity, defocus, opacity)
    out = 1.0 - (1.0 - x) * (1.0 - layer[..., None])
    return _u8(out), {"density": density, "length": length, "angle": angle, "intensity": intensity,
                      "defocus": defocus, "opacity": opacity, "width": width}


def snow(img: np.ndarray, rng: np.random.Generator, density: float, flake_size: float,
         veil: float, defocus: float = 0.0, opacity: float = 1.0) -> tuple[np.ndarray, Params]:
    """Layered snow: a few depth layers of soft flakes (nearer = larger, sparser), a whitening veil."""
    x = _f(img)
    h, w = x.shape[:2]
    layer = np.zeros((h, w), np.float32)
    angle = rng.uniform(60, 120)
    for depth, scale in enumerate((0.5, 1.0, 1.8)):
        seeds = (rng.random((h, w)) < density / (1 + 2 * depth)).astype(np.float32)
        radius = max(flake_size * scale, 0.5)
        flakes = cv2.GaussianBlur(seeds, (0, 0), sigmaX=radius) * (2 * np.pi * radius * radius)
        flakes = cv2.filter2D(flakes, -1, line_kernel(2 + 2 * scale, angle), borderType=cv2.BORDER_REFLECT)
        layer = np.maximum(layer, np.clip(flakes * 0.9, 0, 1))
    layer = _precipitation_layer(layer, defocus, opacity)
    veiled = x * (1 - veil) + veil * 0.9
    out = 1.0 - (1.0 - veiled) * (1.0 - layer[..., None])
    return _u8(out), {"density": density, "flake_size": flake_size, "veil": veil, "angle": round(float(angle), 2),
                      "defocus": defocus, "opacity": opacity}


# --- optics: blur -------------------------------------------------------------------------------

def motion_blur(img: np.ndarray, rng: np.random.Generator, length: float, angle: float) -> tuple[np.ndarray, Params]:
    return _u8(_convolve(_f(img), line_kernel(length, angle))), {"length": length, "angle": angle}


def defocus_blur(img: np.ndarray, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, Params]:
    return _u8(_convolve(_f(img), disk_kernel(radius))), {"radius": radius}


def trajectory_kernel(rng: np.random.Generator, size: int, steps: int = 64, jitter: float = 0.6) -> np.ndarray:
    """A camera-shake kernel: a random walk with inertia (a hand's path during the exposure),
    splatted with bilinear weights onto ``size`` × ``size`` pixels and normalised. Straight lines
    alone teach a deblurrer nothing about the curved, uneven paths of measured shake kernels."""
    velocity = rng.normal(0.0, 1.0, 2)
    velocity /= max(float(np.linalg.norm(velocity)), 1e-6)
    path = np.zeros((steps, 2))
    for i in range(1, steps):
        velocity = velocity + rng.normal(0.0, jitter, 2)
        velocity /= max(float(np.linalg.norm(velocity)), 1e-6)
        path[i] = path[i - 1] + velocity
    path -= path.mean(axis=0)
    extent = float(np.abs(path).max())
    path *= (size - 1) / 2 / max(extent, 1e-6) * rng.uniform(0.6, 1.0)
    path += (size - 1) / 2
    k = np.zeros((size, size), np.float32)
    for y, x in path:
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - y0, x - x0
        for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            if 0 <= y0 + dy < size and 0 <= x0 + dx < size:
                k[y0 + dy, x0 + dx] += wgt
    return k / k.sum()


def shake_blur(img: np.ndarray, rng: np.random.Generator, size: float) -> tuple[np.ndarray, Params]:
    """Camera-shake blur with a random trajectory kernel of about ``size`` pixels."""
    side = int(round(size)) | 1
    return _u8(_convolve(_f(img), trajectory_kernel(rng, side))), {"size": side}


def kernel_blur(img: np.ndarray, rng: np.random.Generator, kernels: str, name: str = "") -> tuple[np.ndarray, Params]:
    """Blur with a measured kernel from an npz of 2-D kernels (e.g. Levin09 and the 12 standard
    motion kernels); ``name`` picks one, else one is drawn from the seed."""
    with np.load(kernels, allow_pickle=False) as z:
        names = sorted(z.files)
        chosen = name or names[int(rng.integers(len(names)))]
        if chosen not in z.files:
            raise ValueError(f"kernel {chosen!r} not in {kernels}; it has {names}")
        k = z[chosen].astype(np.float32)
    return _u8(_convolve(_f(img), k)), {"kernels": kernels, "name": chosen, "size": int(k.shape[0])}


# --- sensor: exposure and noise -----------------------------------------------------------------

def low_light(img: np.ndarray, rng: np.random.Generator, gamma: float, scale: float,
              sigma: float) -> tuple[np.ndarray, Params]:
    """Under-exposure: scale·x^γ, then read noise of σ/255 that a dark capture brings."""
    x = scale * np.power(_f(img), gamma)
    x = x + rng.normal(0.0, sigma / 255.0, x.shape).astype(np.float32)
    return _u8(x), {"gamma": gamma, "scale": scale, "sigma": sigma}


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> tuple[np.ndarray, Params]:
    """The papers' convention: float image in [0,1] + N(0, σ/255), clipped, rounded to 8 bits."""
    x = _f(img) + rng.normal(0.0, sigma / 255.0, img.shape).astype(np.float32)
    return _u8(x), {"sigma": sigma}


def camera_noise(img: np.ndarray, rng: np.random.Generator, photons: float,
                 read_sigma: float) -> tuple[np.ndarray, Params]:
    """Poisson–Gaussian noise in linear light (shot noise of ``photons`` at white, read noise)."""
    lin = np.power(_f(img), 2.2)
    shot = rng.poisson(lin * photons).astype(np.float32) / photons
    noisy = shot + rng.normal(0.0, read_sigma / 255.0, lin.shape).astype(np.float32)
    return _u8(np.power(np.clip(noisy, 0.0, 1.0), 1 / 2.2)), {"photons": photons, "read_sigma": read_sigma}


def sensor_noise(img: np.ndarray, rng: np.random.Generator, sigma: float, correlation: float,
                 shared: float) -> tuple[np.ndarray, Params]:
    """Noise as a camera's processing leaves it: white noise blurred over ``correlation`` px
    (demosaicking, in-camera denoising), a ``shared`` part common to the three channels (luma
    noise), scaled to σ/255 after blurring. Unlike white noise it survives 2×2 averaging."""
    h, w = img.shape[:2]
    white = rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32)
    white = shared * white.mean(axis=2, keepdims=True) * np.sqrt(3) + (1 - shared) * white
    noise = cv2.GaussianBlur(white, (0, 0), sigmaX=correlation)
    noise *= sigma / 255.0 / max(float(noise.std()), 1e-6)
    return _u8(_f(img) + noise), {"sigma": sigma, "correlation": correlation, "shared": shared}


# --- codec ---------------------------------------------------------------------------------------

def jpeg(img: np.ndarray, rng: np.random.Generator, quality: int) -> tuple[np.ndarray, Params]:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)
    return out, {"quality": int(quality)}


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("haze", "haze", haze, {"beta": (0.8, 2.5), "airlight": (0.75, 1.0)}),
    Kind("rain", "rain", rain, {"density": (0.004, 0.02), "length": (12.0, 35.0), "angle": (70.0, 110.0),
                                "intensity": (0.5, 0.9)}),
    Kind("snow", "snow", snow, {"density": (0.002, 0.008), "flake_size": (0.8, 2.0), "veil": (0.05, 0.25)}),
    Kind("motion-blur", "blur", motion_blur, {"length": (7.0, 25.0), "angle": (0.0, 180.0)}),
    Kind("defocus-blur", "blur", defocus_blur, {"radius": (2.0, 6.0)}),
    Kind("kernel-blur", "blur", kernel_blur, {}),
    Kind("shake-blur", "blur", shake_blur, {"size": (9.0, 31.0)}),
    Kind("low-light", "low-light", low_light, {"gamma": (1.5, 2.5), "scale": (0.08, 0.35), "sigma": (1.0, 6.0)}),
    Kind("camera-noise", "noise", camera_noise, {"photons": (30.0, 300.0), "read_sigma": (1.0, 6.0)}),
    Kind("sensor-noise", "noise", sensor_noise, {"sigma": (4.0, 30.0), "correlation": (0.5, 1.2),
                                                 "shared": (0.3, 1.0)}),
    Kind("noise", "noise", gaussian_noise, {"sigma": (5.0, 50.0)}),
    Kind("jpeg", "jpeg", jpeg, {"quality": (10, 90)}),
)}
# Integer parameters are drawn as integers, and formatted back without a decimal point.
_INT_PARAMS = {"quality"}


@dataclass(frozen=True)
class Step:
    kind: str
    params: dict[str, float | int | str | tuple[float, float]]


def parse_spec(spec: str) -> list[Step]:
    """``"rain+noise:sigma=10..30"`` → steps in physical order. Errors name the bad part."""
    steps = []
    for part in spec.split("+"):
        name, _, args = part.strip().partition(":")
        if name not in KINDS:
            raise ValueError(f"degradation spec {spec!r}: unknown kind {name!r}; known kinds: {', '.join(KINDS)}")
        params: dict[str, float | int | str | tuple[float, float]] = {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            pname, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"degradation spec {spec!r}: expected param=value, got {item!r}")
            params[pname] = _parse_value(value, spec)
        steps.append(Step(name, params))
    order = list(KINDS)
    return sorted(steps, key=lambda s: order.index(s.kind))


def _parse_value(value: str, spec: str) -> float | int | str | tuple[float, float]:
    if ".." in value:
        lo, hi = value.split("..", 1)
        try:
            return (float(lo), float(hi))
        except ValueError:
            raise ValueError(f"degradation spec {spec!r}: bad range {value!r}") from None
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        return value


def _draw(name: str, value: float | int | str | tuple[float, float], rng: np.random.Generator) -> float | int | str:
    if isinstance(value, tuple):
        lo, hi = value
        if name in _INT_PARAMS:
            return int(rng.integers(int(lo), int(hi) + 1))
        return round(float(rng.uniform(lo, hi)), 4)
    return value


def apply(img: np.ndarray, spec: str, seed: int, kernels: str = "") -> tuple[np.ndarray, list[dict]]:
    """Degrade an 8-bit RGB image by ``spec`` with ``seed``.

    Returns the degraded uint8 image and the degradations applied, in the sample format's
    ``{"type", "params"}`` form (params hold the kind and every value actually used).
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
    rng = np.random.default_rng(seed)
    out = img
    applied = []
    for step in parse_spec(spec):
        kind = KINDS[step.kind]
        values = {**kind.defaults, **step.params}
        if step.kind == "kernel-blur":
            values.setdefault("kernels", kernels)
            if not values["kernels"]:
                raise ValueError("kernel-blur needs a kernels npz (kernel-blur:kernels=PATH or kernels=...)")
        drawn = {n: _draw(n, v, rng) for n, v in sorted(values.items())}
        try:
            out, used = kind.apply(out, rng, **drawn)
        except TypeError as e:
            raise ValueError(f"degradation {step.kind!r}: bad parameters {sorted(step.params)}: {e}") from e
        applied.append({"type": kind.type, "params": {"kind": step.kind, **used}})
    return np.ascontiguousarray(out), applied


def types_of(spec: str) -> list[str]:
    """Vocabulary types a spec produces, in application order, without duplicates."""
    return list(dict.fromkeys(KINDS[s.kind].type for s in parse_spec(spec)))
