"""hil.faults.sensor: shape, dtype, purity and seeding of every fault, and the statistics each promises."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.faults import sensor
from hil.faults.sensor import (
    FAULTS,
    SensorNoise,
    apply_to_npz,
    brightness_contrast,
    dead_pixel_mask,
    dead_pixels,
    dropped_frame_indices,
    dropped_frames,
    gaussian_noise,
    measured_snr_db,
    occlusion,
    quantize,
    salt_and_pepper,
    selected_count,
)

PROPERTY = settings(max_examples=60, deadline=None)
DTYPES = (np.float32, np.float64, np.uint8)
SEEDS = st.integers(min_value=0, max_value=2**63 - 1)

Fault = Callable[[np.ndarray, int], np.ndarray]


def _flat_image(x: np.ndarray) -> tuple[int, int]:
    """Any sample shape seen as a 1 x size image, so occlusion applies to every tensor."""
    return (1, math.prod(x.shape[1:]))


# Each fault with parameters that fit any tensor of >= 1 dim; `random` says whether the seed matters.
CASES: dict[str, tuple[Fault, bool]] = {
    "gaussian": (lambda x, seed: gaussian_noise(x, 10.0, seed=seed), True),
    "gaussian_per_sample": (lambda x, seed: gaussian_noise(x, 10.0, per_sample=True, seed=seed), True),
    "gaussian_clipped": (lambda x, seed: gaussian_noise(x, 0.0, clip=(0.0, 1.0), seed=seed), True),
    "salt_and_pepper": (lambda x, seed: salt_and_pepper(x, 0.2, seed=seed), True),
    "dead_pixels": (lambda x, seed: dead_pixels(x, 0.3, value=7.0, seed=seed), True),
    "occlusion": (lambda x, seed: occlusion(x, (1, 1), image_shape=_flat_image(x), seed=seed), True),
    "brightness_contrast": (lambda x, seed: brightness_contrast(x, 0.1, 1.5, seed=seed), False),
    "quantize": (lambda x, seed: quantize(x, 3, seed=seed), False),
    "dropped_frames": (lambda x, seed: dropped_frames(x, 0.5, seed=seed), True),
}
RANDOM = [name for name, (_, random) in CASES.items() if random]


@st.composite
def tensors(draw: st.DrawFn, min_dims: int = 1, max_dims: int = 4, max_side: int = 6) -> np.ndarray:
    """A float32/float64/uint8 tensor with values in its usual sensor range (0..1 floats, 0..255 bytes)."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape).astype(dtype)


def _frozen(x: np.ndarray) -> np.ndarray:
    """A read-only copy: any write to it inside a fault raises."""
    x = x.copy()
    x.flags.writeable = False
    return x


# -- every fault: shape, dtype, purity, seeds -------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@PROPERTY
@given(x=tensors(), seed=SEEDS)
def test_shape_and_dtype_kept_and_input_untouched(case: str, x: np.ndarray, seed: int) -> None:
    before = x.copy()
    x = _frozen(x)
    y = CASES[case][0](x, seed)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.shares_memory(x, y)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("case", CASES)
@PROPERTY
@given(x=tensors(), seed=SEEDS)
def test_same_seed_same_output(case: str, x: np.ndarray, seed: int) -> None:
    fault = CASES[case][0]
    np.testing.assert_array_equal(fault(x, seed), fault(x, seed))


@pytest.mark.parametrize("case", RANDOM)
@settings(max_examples=30, deadline=None)
@given(seeds=st.lists(SEEDS, min_size=2, max_size=2, unique=True), dtype=st.sampled_from(DTYPES))
def test_different_seeds_differ(case: str, seeds: list[int], dtype: type) -> None:
    # Big enough that two seeds picking the same noise, pixels, patch places or frames is ~impossible.
    x = (np.random.default_rng(0).random((64, 1, 8, 8)) * (200 if dtype == np.uint8 else 0.8) + 0.1).astype(dtype)
    fault = CASES[case][0]
    assert not np.array_equal(fault(x, seeds[0]), fault(x, seeds[1]))


@pytest.mark.parametrize("seed", [-1, 1.5, True, "7"])
def test_a_seed_is_a_non_negative_integer(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        gaussian_noise(np.ones((2, 2)), 10, seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("x", [np.ones(3, dtype=bool), np.ones(3, dtype=complex)])
def test_non_real_tensors_are_refused(x: np.ndarray) -> None:
    with pytest.raises(ValueError, match="real numeric"):
        quantize(x, 2)


def test_empty_tensors_come_back_empty() -> None:
    for name, (fault, _) in CASES.items():
        if name != "occlusion":  # a patch cannot fit in an empty image
            assert fault(np.zeros((0, 4), np.float32), 1).shape == (0, 4), name


# -- Gaussian noise -------------------------------------------------------------------------------


@PROPERTY
@given(snr=st.floats(-10, 60), seed=SEEDS, dtype=st.sampled_from([np.float32, np.float64]),
       samples=st.integers(1, 40), offset=st.floats(-2, 2), scale=st.floats(0.01, 100))
def test_measured_snr_is_the_requested_snr(snr: float, seed: int, dtype: type, samples: int, offset: float,
                                           scale: float) -> None:
    """>= 10k elements: the measured SNR is within 0.5 dB (the chi-square spread is ~0.06 dB there)."""
    per_sample = math.ceil(10_000 / samples)
    x = ((np.random.default_rng(seed % 2**32).random((samples, per_sample)) + offset) * scale).astype(dtype)
    if not np.any(x):
        return
    assert abs(measured_snr_db(x, gaussian_noise(x, snr, seed=seed)) - snr) < 0.5


@PROPERTY
@given(snr=st.floats(-10, 60), seed=SEEDS)
def test_per_sample_snr_holds_for_each_sample(snr: float, seed: int) -> None:
    # Samples 100x apart in power: with batch power the dark ones would get ~20 dB less SNR.
    x = np.random.default_rng(1).random((4, 4096)) * np.array([[0.01], [0.1], [1.0], [10.0]])
    y = gaussian_noise(x, snr, per_sample=True, seed=seed)
    for clean, noisy in zip(x, y, strict=True):
        assert abs(measured_snr_db(clean, noisy) - snr) < 0.5


def test_batch_snr_gives_dark_samples_less_snr() -> None:
    x = np.random.default_rng(1).random((2, 4096)) * np.array([[0.1], [1.0]])
    y = gaussian_noise(x, 20, seed=3)
    assert measured_snr_db(x[0], y[0]) < measured_snr_db(x[1], y[1]) - 15  # 20 dB of power apart


def test_noise_skips_nan_and_all_zero_inputs() -> None:
    x = np.ones((3, 100), np.float32)
    x[1] = np.nan  # a dropped frame: no signal, and stays dropped
    y = gaussian_noise(x, 10, seed=0)
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))
    np.testing.assert_array_equal(gaussian_noise(np.zeros((2, 5)), 10, seed=0), 0)


def test_clipped_noise_stays_in_range() -> None:
    x = np.random.default_rng(0).random((100, 64)).astype(np.float32)
    y = gaussian_noise(x, 0, clip=(0.0, 1.0), seed=0)
    assert y.min() >= 0 and y.max() <= 1 and not np.array_equal(x, y)


def test_integer_noise_is_rounded_and_clipped() -> None:
    x = np.full((10, 100), 250, np.uint8)
    y = gaussian_noise(x, 10, seed=0)
    assert y.dtype == np.uint8 and y.max() == 255 and y.min() < 250


# -- salt and pepper ------------------------------------------------------------------------------


@PROPERTY
@given(rate=st.floats(0, 1), seed=SEEDS, size=st.integers(10_000, 40_000))
def test_salt_and_pepper_rate(rate: float, seed: int, size: int) -> None:
    x = np.random.default_rng(seed % 2**32).uniform(0.1, 0.9, size).astype(np.float32)  # never 0 or 1 already
    y = salt_and_pepper(x, rate, low=0.0, high=1.0, seed=seed)
    hit = y != x
    assert set(np.unique(y[hit])) <= {0.0, 1.0}
    tolerance = 5 * math.sqrt(rate * (1 - rate) / size) + 1e-12  # 5 binomial standard deviations
    assert abs(hit.mean() - rate) <= tolerance
    if hit.sum() > 1000:
        assert abs((y[hit] == 1.0).mean() - 0.5) < 0.1  # salt and pepper at even odds


def test_salt_and_pepper_defaults_to_the_tensors_range() -> None:
    x = np.random.default_rng(0).integers(10, 200, (50, 50), dtype=np.uint8)
    y = salt_and_pepper(x, 0.3, seed=1)
    assert set(np.unique(y[y != x])) <= {int(x.min()), int(x.max())}


def test_salt_and_pepper_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        salt_and_pepper(np.ones(4), 1.5, seed=0)


# -- dead pixels ----------------------------------------------------------------------------------


@PROPERTY
@given(x=tensors(min_dims=2), fraction=st.floats(0, 1), seed=SEEDS)
def test_dead_pixels_are_the_same_in_every_sample(x: np.ndarray, fraction: float, seed: int) -> None:
    y = dead_pixels(x, fraction, value=3, seed=seed)
    mask = dead_pixel_mask(x.shape[1:], fraction, seed=seed)
    assert mask.sum() == selected_count(fraction, mask.size)
    assert np.all(y[:, mask] == 3)
    np.testing.assert_array_equal(y[:, ~mask], x[:, ~mask])
    # One seed is one sensor: a smaller batch through it has the same dead pixels.
    np.testing.assert_array_equal(dead_pixels(x[:1], fraction, value=3, seed=seed), y[:1])


# -- occlusion ------------------------------------------------------------------------------------


def _patch_boxes(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Per sample, the bounding box (top, left, height, width) of the changed elements over (H, W)."""
    changed = np.any((x != y).reshape(x.shape[0], -1, *x.shape[-2:]), axis=1)
    boxes = []
    for c in changed:
        rows, cols = np.nonzero(c)
        boxes.append((rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
        assert c.sum() == boxes[-1][2] * boxes[-1][3]  # a filled rectangle, nothing outside it
    return boxes


@PROPERTY
@given(channels=st.integers(1, 3), h=st.integers(1, 10), w=st.integers(1, 10), data=st.data(), seed=SEEDS)
def test_occlusion_is_one_rectangle_per_sample(channels: int, h: int, w: int, data: st.DataObject,
                                               seed: int) -> None:
    ph, pw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    x = np.random.default_rng(0).uniform(0.5, 1.0, (8, channels, h, w))
    boxes = _patch_boxes(x, occlusion(x, (ph, pw), seed=seed))
    assert all(b[2:] == (ph, pw) and 0 <= b[0] <= h - ph and 0 <= b[1] <= w - pw for b in boxes)


def test_occlusion_at_a_fixed_place_and_on_flat_inputs() -> None:
    images = np.random.default_rng(0).uniform(0.5, 1.0, (5, 1, 8, 8)).astype(np.float32)
    fixed = occlusion(images, (3, 2), position=(4, 5), value=0.25, seed=0)
    assert _patch_boxes(images, fixed) == [(4, 5, 3, 2)] * 5 and np.all(fixed[:, :, 4:7, 5:7] == 0.25)
    flat = occlusion(images.reshape(5, 64), (3, 2), position=(4, 5), value=0.25, image_shape=(8, 8), seed=0)
    np.testing.assert_array_equal(flat, fixed.reshape(5, 64))
    # Drawn places: the same for flat and image inputs too, as the seed picks them, not the layout.
    np.testing.assert_array_equal(occlusion(images.reshape(5, 64), (2, 2), image_shape=(1, 8, 8), seed=4),
                                  occlusion(images, (2, 2), seed=4).reshape(5, 64))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"size": (9, 1)}, "does not fit"), ({"size": (2, 2), "position": (7, 0)}, "does not fit"),
    ({"size": (1, 1), "image_shape": (8, 9)}, "image_shape"), ({"size": (1, 1), "image_shape": (64,)}, "image_shape"),
])
def test_occlusion_rejects_what_does_not_fit(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        occlusion(np.ones((2, 1, 8, 8)), seed=0, **kwargs)  # type: ignore[arg-type]


# -- brightness and contrast ----------------------------------------------------------------------


@PROPERTY
@given(brightness=st.floats(-1, 1), contrast=st.floats(0, 3), seed=SEEDS)
def test_contrast_keeps_each_samples_mean_and_brightness_shifts_it(brightness: float, contrast: float,
                                                                  seed: int) -> None:
    x = np.random.default_rng(seed % 2**32).random((6, 3, 5))
    y = brightness_contrast(x, brightness, contrast)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)) + brightness, atol=1e-9)
    np.testing.assert_allclose(y.std(axis=(1, 2)), x.std(axis=(1, 2)) * contrast, atol=1e-9)
    clipped = brightness_contrast(x, brightness, contrast, clip=(0.0, 1.0))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_brightness_on_bytes_saturates() -> None:
    x = np.array([[0, 100, 250]], np.uint8)
    np.testing.assert_array_equal(brightness_contrast(x, brightness=10), [[10, 110, 255]])


# -- quantization ---------------------------------------------------------------------------------


@PROPERTY
@given(x=tensors(), bits=st.integers(1, 8))
def test_quantization_leaves_at_most_2_to_the_bits_values(x: np.ndarray, bits: int) -> None:
    y = quantize(x, bits)
    assert np.unique(y).size <= 2**bits
    assert y.min() >= x.min() and y.max() <= x.max()  # levels span the tensor's own range


@PROPERTY
@given(bits=st.integers(1, 16), low=st.floats(-10, 0), span=st.floats(0.1, 10))
def test_quantization_error_is_at_most_half_a_step(bits: int, low: float, span: float) -> None:
    x = np.random.default_rng(bits).uniform(low, low + span, 1000)
    y = quantize(x, bits, low=low, high=low + span)
    assert np.max(np.abs(y - x)) <= span / (2**bits - 1) / 2 * (1 + 1e-9)


def test_quantization_clips_to_the_given_range_and_keeps_full_range_bytes() -> None:
    np.testing.assert_array_equal(quantize(np.array([-1.0, 0.4, 0.6, 2.0]), 1, low=0, high=1), [0, 0, 1, 1])
    x = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(quantize(x, 8), x)
    assert np.unique(quantize(x, 4)).size == 16


@pytest.mark.parametrize("bits", [0, 33, 2.5, True])
def test_quantization_bits_are_checked(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        quantize(np.ones(4), bits)  # type: ignore[arg-type]


# -- dropped frames -------------------------------------------------------------------------------


@PROPERTY
@given(n=st.integers(1, 200), fraction=st.floats(0, 1), seed=SEEDS, nan=st.booleans())
def test_dropped_frame_count_is_exact(n: int, fraction: float, seed: int, nan: bool) -> None:
    x = np.random.default_rng(0).uniform(0.1, 1.0, (n, 1, 4, 4)).astype(np.float32)  # no all-zero frame
    fill = math.nan if nan else 0.0
    y = dropped_frames(x, fraction, fill=fill, seed=seed)
    dropped = np.all(np.isnan(y) if nan else y == 0, axis=(1, 2, 3))
    assert dropped.sum() == selected_count(fraction, n)
    np.testing.assert_array_equal(np.flatnonzero(dropped), dropped_frame_indices(n, fraction, seed=seed))
    np.testing.assert_array_equal(y[~dropped], x[~dropped])


@given(fraction=st.floats(0, 1), n=st.integers(0, 10_000))
def test_selected_count_rounds_half_up(fraction: float, n: int) -> None:
    k = selected_count(fraction, n)
    assert 0 <= k <= n and abs(k - fraction * n) <= 0.5
    assert selected_count(0.5, 3) == 2 and selected_count(0.25, 10) == 3 and selected_count(0.05, 10) == 1


def test_nan_cannot_fill_an_integer_tensor() -> None:
    with pytest.raises(ValueError, match="uint8"):
        dropped_frames(np.ones((4, 2), np.uint8), 0.5, fill=math.nan, seed=0)


# -- SensorNoise and npz files --------------------------------------------------------------------


def test_the_registry_has_every_fault() -> None:
    assert set(FAULTS) == {"gaussian", "salt_and_pepper", "dead_pixels", "occlusion", "brightness_contrast",
                           "quantize", "dropped_frames"}
    assert set(sensor.__all__) <= set(dir(sensor))


def test_sensor_noise_applies_its_fault_and_describes_itself() -> None:
    x = np.random.default_rng(0).random((10, 64)).astype(np.float32)
    params = {"size": (2, 3), "image_shape": (8, 8)}
    noise = SensorNoise("occlusion", params, seed=5)
    params["size"] = (1, 1)  # the value keeps what it was given
    np.testing.assert_array_equal(noise.apply(x), occlusion(x, (2, 3), image_shape=(8, 8), seed=5))
    assert noise.describe() == "occlusion(size=(2, 3), image_shape=(8, 8)) seed=5"
    assert json.loads(json.dumps(noise.to_dict())) == {"kind": "occlusion", "seed": 5,
                                                       "params": {"size": [2, 3], "image_shape": [8, 8]}}
    assert noise == SensorNoise("occlusion", {"size": (2, 3), "image_shape": (8, 8)}, seed=5)
    assert hash(noise) == hash(SensorNoise("occlusion", {"size": (1, 1)}, seed=5))  # params are not hashed
    assert SensorNoise("quantize", {"bits": 4}).describe() == "quantize(bits=4) seed=0"


@pytest.mark.parametrize(("kind", "params", "seed", "match"), [
    ("gausian", {"snr_db": 10}, 0, "unknown sensor fault 'gausian'"),
    ("gaussian", {"snr": 10}, 0, "unknown parameter"),
    ("gaussian", {}, 0, "missing parameter.*snr_db"),
    ("gaussian", {"snr_db": 10, "seed": 3}, 0, "unknown parameter"),
    ("gaussian", {"snr_db": 10}, -2, "seed"),
])
def test_sensor_noise_is_checked_when_made(kind: str, params: dict[str, object], seed: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SensorNoise(kind, params, seed=seed)


def _save(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"x_flat": rng.random((20, 64)).astype(np.float32), "labels": rng.integers(0, 10, 20),
              "x_image": rng.random((20, 1, 8, 8)).astype(np.float32), "seed": np.array(7)}
    np.savez(path, **arrays)
    return arrays


def test_apply_to_npz_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "eval.npz"
    arrays = _save(src)
    noise = SensorNoise("gaussian", {"snr_db": 15}, seed=3)
    dst = apply_to_npz(src, tmp_path / "out" / "eval-15db", "x_image", noise)
    assert dst == tmp_path / "out" / "eval-15db" and sorted(p.name for p in dst.parent.iterdir()) == [dst.name]
    with np.load(dst) as out:
        assert out.files == list(arrays)
        for name, array in arrays.items():
            expected = noise.apply(array) if name == "x_image" else array
            assert out[name].dtype == array.dtype
            np.testing.assert_array_equal(out[name], expected)
    with np.load(src) as untouched:
        np.testing.assert_array_equal(untouched["x_image"], arrays["x_image"])


def test_apply_to_npz_in_place_and_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    arrays = _save(path)
    apply_to_npz(path, path, "x_flat", SensorNoise("dropped_frames", {"fraction": 0.5}, seed=1))
    with np.load(path) as out:
        assert np.all(out["x_flat"] == 0, axis=1).sum() == 10
        np.testing.assert_array_equal(out["labels"], arrays["labels"])
    with pytest.raises(KeyError, match=r"no array 'x' \(has: x_flat"):
        apply_to_npz(path, tmp_path / "b.npz", "x", SensorNoise("quantize", {"bits": 2}))
    assert not (tmp_path / "b.npz").exists() and len(list(tmp_path.iterdir())) == 1
