"""experiments/quantizers.py --bit_sweep: one attribute's precision lowered in a file's symbols.

Tiny: random Gaussians quantized as a file holds them (no fitting), 32×32.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.quantize import init_quantizers, to_quantized
from gi_jax.errors import InvalidInputError
from tests.experiments.runner import LazyExperiment

quantizers = LazyExperiment("quantizers.py")

H = W = 32


def grid_quantized(n=200, seed=0, wide_sigma=0.0):
  g = gi_jax.init_gaussians(jax.random.key(seed), n, H, W)
  config = codec.QuantizerConfig(position_step=0.25, codebook_size=16, wide_sigma=wide_sigma)
  q = to_quantized(g, init_quantizers(jax.random.key(seed + 1), g, config), config,
                         (H, W))
  return q.to_numpy()


def test_coarsen_changes_one_attribute_and_decodes():
  q = grid_quantized()
  assert quantizers.default_bits(q, "positions") == 7  # 32 px / 0.25 px = 128 cells
  assert quantizers.default_bits(q, "cov1") == 6
  base = codec.encode(q, H, W)
  for attribute in quantizers.BIT_ATTRIBUTES:
    coarse = quantizers.coarsen(q, attribute, 2)
    changed = {f.name for f in dataclasses.fields(q)
               if f.name not in ("codebooks", "color_scale", "color_offset", "color_bits")
               and not np.array_equal(np.asarray(getattr(q, f.name)),
                                      np.asarray(getattr(coarse, f.name)))}
    expected = {"positions": {"position_codes"}, "colors": {"color_indices"}}.get(
        attribute, {"cov_codes"})
    assert changed == expected, attribute
    data = codec.encode(coarse, H, W)
    assert len(data) < len(base), attribute  # fewer values used: fewer bits
    if attribute in ("cov1", "colors"):  # a decode compiles: one per layout is enough
      image, info = codec.decode(data, backend="reference")
      assert image.shape == (H, W, 3) and np.isfinite(image).all()
      rows = lambda codes: sorted(map(tuple, np.asarray(codes).tolist()))  # noqa: E731 (file order)
      assert rows(info["quantized"].cov_codes) == rows(coarse.cov_codes)
  cov = quantizers.coarsen(q, "cov2", 2).cov_codes[:, 2]
  assert set(np.unique(cov)) <= {0, 16, 32, 48}  # multiples of 2**(6 - 2) within 6 bits
  np.testing.assert_array_equal(quantizers.coarsen(q, "cov0", 2).cov_codes[:, 1:], q.cov_codes[:, 1:])
  pos = quantizers.coarsen(q, "positions", 3).position_codes
  assert (pos % 16 == 0).all() and (pos < 128).all()
  colors = quantizers.coarsen(q, "colors", 1)
  assert colors.color_bits == 1 and colors.codebooks is None
  assert set(np.unique(colors.color_indices)) <= {0, 1}


def test_coarsen_at_full_precision_keeps_the_codes():
  q = grid_quantized(wide_sigma=1.0)
  np.testing.assert_array_equal(quantizers.coarsen(q, "cov0", 6).cov_codes, q.cov_codes)
  np.testing.assert_array_equal(quantizers.coarsen(q, "positions", 7).position_codes,
                                q.position_codes)
  # Wide Gaussians sit on even cells; coarser cells are multiples of 2, so they stay there.
  assert (quantizers.coarsen(q, "positions", 5).position_codes % 2 == 0).all()


def test_coarsen_rejects_bad_requests():
  q = grid_quantized()
  with pytest.raises(InvalidInputError, match="bits must lie"):
    quantizers.coarsen(q, "cov0", 7)
  with pytest.raises(InvalidInputError, match="bits must lie"):
    quantizers.coarsen(q, "colors", 0)
  with pytest.raises(InvalidInputError, match="unknown attribute"):
    quantizers.coarsen(q, "opacity", 3)
  float16 = dataclasses.replace(q, position_cells=None)
  with pytest.raises(InvalidInputError, match="float16"):
    quantizers.coarsen(float16, "positions", 3)


def test_summary_and_plot(tmp_path):
  records = []
  for image in ("a.png", "b.png"):
    records.append(dict(image=image, num_gaussians=10, attribute="baseline", bits=0, bpp=1.0,
                        psnr=30.0, bits_saved_per_gaussian=0.0, psnr_loss=0.0))
    for attribute in quantizers.BIT_ATTRIBUTES:
      for bits in (2, 1):
        records.append(dict(image=image, num_gaussians=10, attribute=attribute, bits=bits,
                            bpp=0.9, psnr=30.0 - 3 + bits, bits_saved_per_gaussian=3.0 - bits,
                            psnr_loss=3.0 - bits))
  rows = quantizers.summarize_bit_depth(records)
  assert [r["attribute"] for r in rows[:3]] == ["baseline", "positions", "positions"]
  assert [r["bits"] for r in rows[1:3]] == [2, 1] and all(r["images"] == 2 for r in rows)
  path = tmp_path / "bit_depth.png"
  quantizers.plot_bit_depth(str(path), rows[1:], "test")
  assert path.read_bytes()[:4] == b"\x89PNG"
  json.dumps(rows)


def test_center_crop(tmp_path):
  image = quantizers.load_target(gi_jax.io.sample_image_path(), 40)
  assert image.shape == (40, 40, 3)
  with pytest.raises(InvalidInputError, match="smaller than"):
    quantizers.load_target(gi_jax.io.sample_image_path(), 100_000)
