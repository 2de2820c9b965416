"""gi_jax.codec.decoder: batched renders and decodes, worker pools, a shared render capacity.
"""

import dataclasses

import numpy as np
import pytest

from gi_jax import codec
from gi_jax.codec.decoder import batch_groups, entropy_decode
from gi_jax.codec.render import render_capacity, render_decoded, render_decoded_batch, render_quantized, render_quantized_batch
from gi_jax.errors import CodecError, InvalidInputError
from tests.codec.helpers import H, W, random_quantized


def test_render_decoded_batch_matches_one_by_one():
  sets = [random_quantized(64, seed=s).dequantize() for s in (1, 2, 3)]
  batch = render_decoded_batch(sets, H, W, "reference")
  assert batch.shape == (3, H, W, 3)
  for image, g in zip(batch, sets):
    np.testing.assert_allclose(image, render_decoded(g, H, W, "reference"), atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_batch_matches_decode_in_order(mixed_files, workers):
  with codec.decoder_pool(workers) as pool:  # workers=0: no pool, pool is None
    images = codec.decode_batch(mixed_files, "reference", executor=pool)
  groups = batch_groups(entropy_decode(mixed_files))
  assert sorted(len(members) for _, _, members in groups) == [1, 1, 1, 3]
  assert [members for _, _, members in groups][0] == [0, 2, 5]
  for data, image in zip(mixed_files, images):
    expected, info = codec.decode(data, "reference")
    assert image.shape == (info["height"], info["width"], 3)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_decode_batch_names_the_corrupt_file(mixed_files, monkeypatch):
  files = list(mixed_files)
  files[1] = files[1][:-7]
  with codec.decoder_pool(2) as pool:
    with pytest.raises(CodecError, match="^file 1: "):
      codec.decode_batch(files, "reference", executor=pool)
  names = [f"f{i}.gimg" for i in range(len(files))]
  with pytest.raises(CodecError, match="^f1.gimg: "):
    codec.decode_batch(files, "reference", names=names)
  # A set that fails the render's checks is named too.
  monkeypatch.setattr(codec.render, "MAX_INTERSECTIONS", 10)
  with pytest.raises(CodecError, match="the Gaussians of f0.gimg touch"):
    codec.decode_batch(mixed_files, "reference", names=names)
  with pytest.raises(InvalidInputError, match="5 names for 6 files"):
    codec.decode_batch(mixed_files, "reference", names=names[:5])


@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_a_shared_render_capacity_changes_no_pixel_and_compiles_once(backend):
  # Sets of one N whose Gaussians grow (a larger covariance step) touch more tiles: each one's
  # own capacity differs.
  q = random_quantized(300, seed=1)
  sets = [dataclasses.replace(q, cov_scale=q.cov_scale * f) for f in (1, 2, 4)]
  own = [render_capacity([q], H, W) for q in sets]
  shared = render_capacity(sets, H, W)
  assert shared == max(own) and len(set(own)) > 1
  for q in sets:
    expected = render_quantized(q, H, W, backend)
    for capacity in (shared, 4 * shared):
      np.testing.assert_array_equal(render_quantized(q, H, W, backend, capacity=capacity),
                                    expected)
  before = codec.render._render._cache_size()
  for q in sets:
    render_quantized(q, H, W, backend, capacity=8 * shared)
  assert codec.render._render._cache_size() == before + 1
  assert render_capacity([], H, W) == 0


def test_render_quantized_batch_checks_its_sets(monkeypatch):
  sets = [random_quantized(64, seed=s) for s in (1, 2)]
  with pytest.raises(InvalidInputError, match="set 1 differs"):
    render_quantized_batch([sets[0], random_quantized(65, seed=2)], H, W, "reference")
  broken = dataclasses.replace(sets[1], cov_scale=np.full(3, np.inf, np.float32))
  with pytest.raises(CodecError, match="set 1 of the batch: decoded Gaussians are not finite"):
    render_quantized_batch([sets[0], broken], H, W, "reference")
  monkeypatch.setattr(codec.render, "MAX_INTERSECTIONS", 10)
  with pytest.raises(CodecError, match="set 0 of the batch touch .* above the decoder's limit"):
    render_quantized_batch(sets, H, W, "reference")
  with pytest.raises(CodecError, match="the Gaussians of file touch"):
    codec.decode(codec.encode(sets[0], H, W), "reference")
