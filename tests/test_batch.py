"""Batched and sharded fitting: equal to single fits, shape buckets in input order, 4 devices equal
1, memory-sized batches. (fit.py's dataset runs: tests/experiments/test_fit.py.)"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

import gi_jax
from gi_jax import errors, memory
from gi_jax.batch import fit_batch
from gi_jax.dataset import fit_dataset
from gi_jax.io import sample_image_path
from gi_jax.gaussians import init_gaussians
from gi_jax.sharding import default_mesh

N, STEPS, SEEDS = 100, 50, [7, 3, 11]
FIELDS = ("means_raw", "cov_raw", "colors")
# Batched and single fits run the same arithmetic; only XLA's fusion of the stacked [B, N] vs the
# unstacked program may round differently (measured: <= 1.2e-7 after 50 steps).
TOL = 1e-5


@pytest.fixture(scope="module")
def sample():
  return np.asarray(Image.open(sample_image_path()).convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="module")
def crops(sample):
  return [sample[200:232, 300:332], sample[100:132, 500:532], sample[300:332, 100:132]]


@pytest.fixture(scope="module")
def one_device(crops):
  return fit_batch(crops, N, STEPS, seeds=SEEDS, steps_per_call=25, progress=False,
                   mesh=default_mesh(1))


def assert_same_fit(a, b):
  for field in FIELDS:
    np.testing.assert_allclose(getattr(a.gaussians, field), getattr(b.gaussians, field),
                               atol=TOL, rtol=TOL, err_msg=field)
  assert [r["step"] for r in a.history] == [r["step"] for r in b.history]
  np.testing.assert_allclose([r["loss"] for r in a.history], [r["loss"] for r in b.history],
                             rtol=TOL)


def test_batch_equals_single_fits(crops, one_device):
  assert len(one_device) == 3
  for i in (0, 2):  # two single fits suffice to show each image gets exactly its own trajectory
    single = gi_jax.fit(crops[i], N, STEPS, seed=SEEDS[i], steps_per_call=25, progress=False)
    assert_same_fit(one_device[i], single)
    assert (one_device[i].height, one_device[i].width, one_device[i].steps) == (32, 32, STEPS)
    assert isinstance(one_device[i].history[-1]["psnr"], float)


def test_fit_is_fit_batch_of_one_bit_for_bit(crops):
  single = gi_jax.fit(crops[0], N, STEPS, seed=SEEDS[0], steps_per_call=25, progress=False)
  records = []
  [batch] = fit_batch(crops[:1], N, STEPS, seeds=SEEDS[:1], steps_per_call=25,
                      progress=records.append)
  for field in FIELDS:
    np.testing.assert_array_equal(getattr(batch.gaussians, field), getattr(single.gaussians, field))
  assert ([(r["step"], r["loss"], r["psnr"]) for r in batch.history] ==
          [(r["step"], r["loss"], r["psnr"]) for r in single.history])
  assert [len(r["loss"]) for r in records] == [1, 1]


def test_four_devices_equal_one(crops, one_device):
  assert len(jax.devices()) == 4  # tests/conftest.py
  mesh = Mesh(np.asarray(jax.devices()), ("batch",))
  records = []
  # 3 images on 4 devices: padded with a copy of the last one, whose result is dropped.
  sharded = fit_batch(crops, N, STEPS, seeds=SEEDS, steps_per_call=25, progress=records.append,
                      mesh=mesh)
  assert len(sharded) == 3
  assert all(len(r["loss"]) == 3 for r in records)
  for a, b in zip(sharded, one_device):
    assert_same_fit(a, b)


def test_dataset_buckets_shapes_and_keeps_input_order(sample, tmp_path):
  a, b = (32, 32), (24, 32)  # the sizes (and N) other tests here use: their compilations are reused
  shapes = [a, b, a, b, a]
  images = [sample[10 * i:10 * i + h, 20 * i:20 * i + w] for i, (h, w) in enumerate(shapes)]
  path = tmp_path / "third.png"
  Image.fromarray(np.round(images[3] * 255).astype(np.uint8)).save(path)
  images[3] = str(path)  # paths and arrays mix
  seeds = [5, 6, 7, 8, 9]
  batches = []
  # steps=0 returns the initial Gaussians: enough to check which result went where, no compile.
  results = fit_dataset(images, N, 0, seeds=seeds, batch_size=2, progress=False,
                        on_result=lambda i, r, chunk: batches.append(tuple(chunk)))
  assert [(r.height, r.width) for r in results] == shapes
  for result, seed, (h, w) in zip(results, seeds, shapes):
    expected = init_gaussians(jax.random.key(seed), N, h, w)
    np.testing.assert_array_equal(result.gaussians.means_raw, expected.means_raw)
  # Same-shape batches of at most 2, in order of first appearance; each image reported once.
  assert sorted(set(batches), key=batches.index) == [(0, 2), (4,), (1, 3)]
  assert sorted(i for chunk in set(batches) for i in chunk) == [0, 1, 2, 3, 4]


def test_bad_batches_are_clear_errors(crops):
  with pytest.raises(errors.InvalidInputError, match="fit_dataset"):
    fit_batch([crops[0], crops[1][:24]], N, 1, progress=False)
  with pytest.raises(errors.InvalidInputError, match="seeds"):
    fit_batch(crops, N, 1, seeds=[1, 2], progress=False)
  with pytest.raises(errors.InvalidInputError, match="batch_size"):
    fit_dataset(crops, N, 1, batch_size=0, progress=False)


def test_memory_sized_batches(monkeypatch):
  per_image = memory.estimate_bytes_per_image(N, 32, 32)
  usable = lambda images: int(images * per_image / memory.MEMORY_HEADROOM)
  monkeypatch.setattr(memory, "_free_bytes_per_device", lambda devices: usable(2.5))
  with pytest.raises(errors.ImageTooLargeError, match="batch_size=2 would fit"):
    memory.check_batch_fits(8, N, 32, 32, num_devices=1)
  memory.check_batch_fits(2, N, 32, 32, num_devices=1)
  assert memory.auto_batch_size(9, N, 32, 32) == 8   # 2 per device on 4 devices
  assert memory.auto_batch_size(6, N, 32, 32) == 4   # a multiple of the device count
  assert memory.auto_batch_size(3, N, 32, 32) == 3   # everything, when it fits
  monkeypatch.setattr(memory, "_free_bytes_per_device", lambda devices: usable(0.5))
  with pytest.raises(errors.ImageTooLargeError, match="not even one image"):
    memory.auto_batch_size(3, N, 32, 32)


def test_memory_estimate_follows_the_channel_count(monkeypatch):
  # Parameters and pixel buffers grow with C; RGB keeps the calibrated figure (docstring).
  estimate = lambda c: memory.estimate_bytes_per_image(N, 256, 256, channels=c)
  assert estimate(1) < estimate(3) < estimate(4) < estimate(8)
  assert estimate(3) == memory.estimate_bytes_per_image(N, 256, 256)
  monkeypatch.setattr(memory, "_free_bytes_per_device",
                      lambda devices: int(2.5 * estimate(3) / memory.MEMORY_HEADROOM))
  memory.check_batch_fits(2, N, 256, 256, num_devices=1, channels=3)
  with pytest.raises(errors.ImageTooLargeError, match="batch_size=1 would fit"):
    memory.check_batch_fits(2, N, 256, 256, num_devices=1, channels=8)


def test_batch_with_gradient_init_and_densify_equals_single_fits(crops):
  from gi_jax.densify import DensifySchedule
  schedule = DensifySchedule(every=10, start=10)
  batch = fit_batch(crops[:2], 60, 30, seeds=[3, 4], init="gradient", densify=schedule,
                    steps_per_call=15, progress=False, mesh=default_mesh(1))
  for image, seed, result in zip(crops[:2], [3, 4], batch):
    alone = gi_jax.fit(image, 60, 30, seed=seed, init="gradient", densify=schedule,
                       steps_per_call=15, progress=False)
    assert_same_fit(result, alone)
