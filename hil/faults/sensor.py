"""Sensor faults: pure, seeded transformations of model inputs before they reach the model.

    from hil.faults.sensor import SensorNoise, apply_to_npz, gaussian_noise
    noisy = gaussian_noise(x, snr_db=20, seed=7)
    apply_to_npz(Path("eval.npz"), Path("eval-20db.npz"), "x_image", SensorNoise("gaussian", {"snr_db": 20}, seed=7))

Unlike the network, clock and disk faults nothing here touches a device: a sensor fault is a
changed input set, which then goes through the runner like any other. numpy only, no hil imports.

Conventions, shared by every function:
- Axis 0 is the sample (frame) axis; the rest of the shape is one sample, e.g. (N, 1, 8, 8) or (N, 64).
- A NEW array of the input's shape and dtype comes back; the input is never written to.
- Arithmetic is done in float64, then cast back: integer dtypes are rounded and clipped to their
  range (so noise on uint8 is also quantized and clipped), float dtypes are cast without clipping.
- `seed` (an int >= 0) decides every random choice: the same seed gives the same output, and the
  stream is also keyed by the fault kind, so two kinds given one seed draw independently.
  Deterministic faults (brightness_contrast, quantize) take a seed only for a uniform interface.
- Fractions become counts by rounding half up (`selected_count(fraction, n)`), so they are exact, not drawn.
"""

from __future__ import annotations

import inspect
import math
import os
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FAULTS", "SensorNoise", "apply_to_npz", "brightness_contrast", "dead_pixel_mask", "dead_pixels",
    "dropped_frame_indices", "dropped_frames", "gaussian_noise", "measured_snr_db", "occlusion", "quantize",
    "salt_and_pepper", "selected_count",
]


# -- shared helpers ---------------------------------------------------------------------------------


def _rng(seed: int, kind: str) -> np.random.Generator:
    """A generator for one fault kind: keyed by kind so faults composed with one seed stay independent."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode())])


def _check_input(x: np.ndarray, need_samples: bool = False) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"sensor faults need a real numeric tensor, got dtype {x.dtype}")
    if need_samples and x.ndim < 1:
        raise ValueError("need a tensor with a sample axis (axis 0), got a scalar")
    return x


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _cast(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 results back to the input dtype: integers rounded and clipped to the dtype's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return y.astype(dtype)


def _value_for(dtype: np.dtype, value: float, what: str) -> float:
    """A fill value the dtype can hold: NaN only in float tensors."""
    if np.issubdtype(dtype, np.integer) and not math.isfinite(value):
        raise ValueError(f"{what} {value!r} cannot be stored in a {dtype} tensor")
    return float(value)


def selected_count(fraction: float, n: int) -> int:
    """How many of n items a fraction selects: fraction * n rounded half up (0.5 of 3 is 2)."""
    return min(n, math.floor(_check_fraction("fraction", fraction) * n + 0.5))


def _range(x: np.ndarray, low: float | None, high: float | None) -> tuple[float, float]:
    """low/high as given, else the tensor's own finite min/max (0/1 for an empty or all-NaN tensor)."""
    finite = x[np.isfinite(x)] if np.issubdtype(x.dtype, np.floating) else x
    lo = float(low) if low is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(high) if high is not None else (float(finite.max()) if finite.size else 1.0)
    if hi < lo:
        raise ValueError(f"high ({hi}) must not be below low ({lo})")
    return lo, hi


def _power(x: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Mean square of the finite elements (NaN dropped frames do not count as signal)."""
    f = x.astype(np.float64)
    finite = np.isfinite(f)
    total = np.sum(np.where(finite, f * f, 0.0), axis=axis, keepdims=axis is not None)
    n = np.sum(finite, axis=axis, keepdims=axis is not None)
    return np.divide(total, n, out=np.zeros_like(total), where=n > 0)


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Measured SNR of `noisy` against `clean`: 10 log10(mean(clean^2) / mean((noisy - clean)^2))."""
    c, n = np.asarray(clean, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    noise = float(np.mean((n - c) ** 2))
    signal = float(np.mean(c * c))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


# -- the faults -------------------------------------------------------------------------------------


def gaussian_noise(x: np.ndarray, snr_db: float, *, per_sample: bool = False,
                   clip: tuple[float, float] | None = None, seed: int) -> np.ndarray:
    """Additive white Gaussian noise at `snr_db`: noise power = signal power / 10^(snr_db / 10).

    Signal power is the mean square of the tensor as given (not its variance: for inputs normalized
    to zero mean the two agree), measured over the whole batch by default, which models a sensor with
    a fixed noise floor: dark frames get relatively more noise. per_sample=True measures it per
    sample, so every sample gets exactly the requested SNR in expectation (an all-zero sample gets
    none). NaN elements are left out of the power and stay NaN. `clip=(low, high)` saturates the
    result like an ADC would, which lowers the noise actually added.
    """
    x = _check_input(x, need_samples=per_sample)
    rng = _rng(seed, "gaussian")
    if not math.isfinite(float(snr_db)):
        raise ValueError(f"snr_db must be a finite number of decibels, got {snr_db!r}")
    axes = tuple(range(1, x.ndim)) if per_sample else None
    noise_power = _power(x, axes) / 10.0 ** (float(snr_db) / 10.0)
    y = x.astype(np.float64) + np.sqrt(noise_power) * rng.standard_normal(x.shape)
    if clip is not None:
        y = np.clip(y, *clip)
    return _cast(y, x.dtype)


def salt_and_pepper(x: np.ndarray, rate: float, *, low: float | None = None, high: float | None = None,
                    seed: int) -> np.ndarray:
    """Each element independently, with probability `rate`, becomes `low` or `high` (even odds).

    low/high default to the tensor's own min/max (0 and 1 for 0..1 images, 0 and 255 for full-range
    uint8). The share of elements hit is therefore binomial around `rate`, and an element that already
    held the value it is set to does not change.
    """
    x = _check_input(x)
    rate = _check_fraction("rate", rate)
    rng = _rng(seed, "salt_and_pepper")
    lo, hi = _range(x, low, high)
    hit = rng.random(x.shape) < rate
    salt = rng.random(x.shape) < 0.5
    y = x.copy()
    y[hit & salt] = _cast(np.array(hi), x.dtype)
    y[hit & ~salt] = _cast(np.array(lo), x.dtype)
    return y


def dead_pixel_mask(sample_shape: tuple[int, ...], fraction: float, *, seed: int) -> np.ndarray:
    """Which elements of one sample are dead: exactly selected_count(fraction, size), chosen by the seed.

    It depends only on the sample shape, the fraction and the seed (never on the data or the batch
    size), so one seed is one physical sensor whichever input set goes through it.
    """
    rng = _rng(seed, "dead_pixels")
    size = math.prod(sample_shape)
    mask = np.zeros(size, dtype=bool)
    mask[rng.choice(size, size=selected_count(fraction, size), replace=False)] = True
    return mask.reshape(sample_shape)


def dead_pixels(x: np.ndarray, fraction: float, *, value: float = 0.0, seed: int) -> np.ndarray:
    """A dead sensor: the same `dead_pixel_mask` positions of every sample stuck at `value`."""
    x = _check_input(x, need_samples=True)
    mask = dead_pixel_mask(x.shape[1:], fraction, seed=seed)
    stuck = _cast(np.array(_value_for(x.dtype, value, "dead pixel value")), x.dtype)
    return np.where(mask, stuck, x).astype(x.dtype, copy=False)  # the mask broadcasts over the samples


def occlusion(x: np.ndarray, size: tuple[int, int], *, value: float = 0.0, position: tuple[int, int] | None = None,
              image_shape: tuple[int, ...] | None = None, seed: int) -> np.ndarray:
    """A (height, width) rectangle of every sample set to `value`: a finger, a sticker, dirt on the lens.

    The spatial dims are the last two of a sample's shape: (N, C, H, W) and (N, H, W) as they are;
    for flat inputs pass `image_shape` (e.g. (8, 8) or (1, 8, 8) for (N, 64)) and it is reshaped for
    the patch and back. Channels-last data (N, H, W, C) would get the patch on (W, C): transpose it
    first. `position` is the patch's top-left (row, col) for every sample (a fixed obstruction);
    None draws a top-left per sample from the seed (an object passing by).
    """
    x = _check_input(x, need_samples=True)
    rng = _rng(seed, "occlusion")
    shape = tuple(image_shape) if image_shape is not None else x.shape[1:]
    if math.prod(shape) != math.prod(x.shape[1:]) or len(shape) < 2:
        raise ValueError(f"image_shape {shape} must have >= 2 dims and as many elements as a sample {x.shape[1:]}")
    h, w = shape[-2:]
    ph, pw = (int(s) for s in size)
    if not (1 <= ph <= h and 1 <= pw <= w):
        raise ValueError(f"patch {ph}x{pw} does not fit in a {h}x{w} image")
    n = x.shape[0]
    if position is not None:
        top, left = (int(p) for p in position)
        if not (0 <= top <= h - ph and 0 <= left <= w - pw):
            raise ValueError(f"patch {ph}x{pw} at {position} does not fit in a {h}x{w} image")
        tops, lefts = np.full(n, top), np.full(n, left)
    else:
        tops, lefts = rng.integers(0, h - ph + 1, size=n), rng.integers(0, w - pw + 1, size=n)
    fill = _cast(np.array(_value_for(x.dtype, value, "occlusion value")), x.dtype)
    rows = (np.arange(h) >= tops[:, None]) & (np.arange(h) < tops[:, None] + ph)  # (n, h)
    cols = (np.arange(w) >= lefts[:, None]) & (np.arange(w) < lefts[:, None] + pw)  # (n, w)
    patch = (rows[:, :, None] & cols[:, None, :]).reshape((n,) + (1,) * (len(shape) - 2) + (h, w))
    return np.where(patch, fill, x.reshape((n, *shape))).astype(x.dtype, copy=False).reshape(x.shape)


def brightness_contrast(x: np.ndarray, brightness: float = 0.0, contrast: float = 1.0, *,
                        clip: tuple[float, float] | None = None, seed: int = 0) -> np.ndarray:
    """Exposure / gain drift: y = (x - m) * contrast + m + brightness, m each sample's mean.

    Contrast scales around each sample's own mean (so it keeps the sample's average level, as
    torchvision does) and brightness is an offset in the tensor's units. `clip` saturates the result
    (pass the sensor's range, e.g. (0, 1)); integer dtypes always clip to their range. Deterministic:
    `seed` is unused.
    """
    x = _check_input(x, need_samples=True)
    _rng(seed, "brightness_contrast")  # validates the seed like every other fault
    f = x.astype(np.float64)
    mean = f.mean(axis=tuple(range(1, x.ndim)), keepdims=True) if x.size else f
    y = (f - mean) * float(contrast) + mean + float(brightness)
    if clip is not None:
        y = np.clip(y, *clip)
    return _cast(y, x.dtype)


def quantize(x: np.ndarray, bits: int, *, low: float | None = None, high: float | None = None,
             seed: int = 0) -> np.ndarray:
    """A coarser ADC: values clipped to [low, high], then rounded to the nearest of 2^bits even levels.

    The result stays in the tensor's units (the levels themselves, not their indices), so it feeds
    the same model; at most 2^bits distinct values remain (NaN stays NaN). A tie goes to the even
    level index, as np.rint does. low/high default to the tensor's own finite min/max.
    Deterministic: `seed` is unused.
    """
    x = _check_input(x)
    _rng(seed, "quantize")
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in [1, 32], got {bits!r}")
    lo, hi = _range(x, low, high)
    levels = 2 ** int(bits) - 1
    step = (hi - lo) / levels
    f = np.clip(x.astype(np.float64), lo, hi)
    y = lo + np.rint((f - lo) / step) * step if step > 0 else np.where(np.isnan(f), f, lo)
    if np.issubdtype(x.dtype, np.integer):
        return _cast(y, x.dtype)
    # Round-trip through the dtype could merge levels but never split one; clipping keeps hi at hi.
    return np.clip(y, lo, hi).astype(x.dtype)


def dropped_frame_indices(n: int, fraction: float, *, seed: int) -> np.ndarray:
    """Which of n frames are dropped: exactly selected_count(fraction, n) distinct indices, sorted."""
    rng = _rng(seed, "dropped_frames")
    return np.sort(rng.choice(n, size=selected_count(fraction, n), replace=False))


def dropped_frames(x: np.ndarray, fraction: float, *, fill: float = 0.0, seed: int) -> np.ndarray:
    """Lost frames: `dropped_frame_indices` samples replaced whole by `fill` (0, or NaN for float tensors)."""
    x = _check_input(x, need_samples=True)
    value = _cast(np.array(_value_for(x.dtype, fill, "dropped frame fill")), x.dtype)
    y = x.copy()
    y[dropped_frame_indices(x.shape[0], fraction, seed=seed)] = value
    return y


# -- a fault as a value: registry, report text, npz files -------------------------------------------

FAULTS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian": gaussian_noise,
    "salt_and_pepper": salt_and_pepper,
    "dead_pixels": dead_pixels,
    "occlusion": occlusion,
    "brightness_contrast": brightness_contrast,
    "quantize": quantize,
    "dropped_frames": dropped_frames,
}


def _parameters(kind: str) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(FAULTS[kind]).parameters)
    del params["x"], params["seed"]
    return params


@dataclass(frozen=True)
class SensorNoise:
    """One sensor fault with its parameters and seed: what the report records, and what reproduces it.

        SensorNoise("gaussian", {"snr_db": 20}, seed=7).apply(x)

    The parameters are checked against the fault's function when the value is made, so a typo
    fails here and not halfway through a run.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown sensor fault '{self.kind}' (known: {', '.join(sorted(FAULTS))})")
        allowed = _parameters(self.kind)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(f"sensor fault '{self.kind}': unknown parameter(s) {', '.join(unknown)} "
                             f"(known: {', '.join(allowed)})")
        missing = [k for k, p in allowed.items() if p.default is inspect.Parameter.empty and k not in self.params]
        if missing:
            raise ValueError(f"sensor fault '{self.kind}': missing parameter(s) {', '.join(missing)}")
        _rng(self.seed, self.kind)  # a bad seed fails now too
        object.__setattr__(self, "params", dict(self.params))  # the caller's dict may change later

    def apply(self, x: np.ndarray) -> np.ndarray:
        return FAULTS[self.kind](x, **self.params, seed=self.seed)

    def describe(self) -> str:
        """One line for a report: `gaussian(snr_db=20) seed=7`."""
        args = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({args}) seed={self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: kind, params, seed."""
        return {"kind": self.kind, "params": dict(self.params), "seed": self.seed}


def apply_to_npz(src: Path, dst: Path, key: str, noise: SensorNoise) -> Path:
    """Write a copy of the npz `src` to `dst` with array `key` passed through `noise`; returns dst.

    Every other array is copied unchanged, under the same name. dst is written to a temporary file
    and moved into place, so it is whole or absent (and src may be dst). Object (pickled) arrays are
    refused: a sensor input set is plain numbers.
    """
    src, dst = Path(src), Path(dst)
    with np.load(src, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if key not in arrays:
        raise KeyError(f"{src}: no array '{key}' (has: {', '.join(arrays) or 'none'})")
    arrays[key] = noise.apply(arrays[key])
    dst.parent.mkdir(parents=True, exist_ok=True)
    temp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")  # created with the umask's mode
    try:
        with temp.open("xb") as f:
            np.savez(f, **arrays)  # a file object: numpy adds no .npz suffix
        os.replace(temp, dst)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return dst
