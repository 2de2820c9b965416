"""gi_jax.codec.rate: the rate model (N for a target bpp), its correction, encode_for_bpp.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from gi_jax import codec
from gi_jax.codec.pipeline import WidePositions
from gi_jax.codec.rate import OURS_RATE, rate_model
from gi_jax.errors import InvalidInputError
from tests.codec.helpers import H, W


@pytest.mark.parametrize("size", [(32, 32), (512, 768), (333, 1000), (4000, 6000)])
@pytest.mark.parametrize("bpp", [0.05, 0.3, 1.0, 4.0])
def test_rate_model_picks_the_count_closest_to_the_target(size, bpp):
  model = rate_model(codec.OURS)
  try:
    n = model.gaussians_for_bpp(bpp, *size)
  except InvalidInputError as e:
    assert "below the smallest" in str(e) and model.bpp(1, *size) > bpp
    return
  miss = lambda k: abs(model.bits(k, *size) - bpp * size[0] * size[1])
  assert miss(n) <= miss(n + 1) and (n == 1 or miss(n) <= miss(n - 1))
  assert model.bpp(n + 1, *size) > model.bpp(n, *size)  # monotone, so the search is exact


def test_rate_model_refuses_what_it_cannot_predict():
  model = rate_model()
  for bad in (0, -0.1, float("nan"), float("inf"), True, "0.3", 1e9):
    with pytest.raises(InvalidInputError):
      model.gaussians_for_bpp(bad, 512, 768)
  assert (model.gaussians_for_bpp(np.float32(0.3), 512, 768)
          == model.gaussians_for_bpp(0.3, 512, 768))
  for settings in (codec.PAPER, dataclasses.replace(codec.OURS, bits_back=False),
                   dataclasses.replace(codec.OURS, codebook_sizes=(16, 32)),
                   dataclasses.replace(codec.OURS, wide=WidePositions(1.5))):
    with pytest.raises(InvalidInputError, match="no rate model"):
      rate_model(settings)
  # Step counts and learning rates change the fit, not what a Gaussian costs: still modelled.
  assert rate_model(dataclasses.replace(codec.OURS, steps=10, learning_rate=1e-3)) == model


def test_rate_model_of_wide_positions():
  narrow = rate_model(dataclasses.replace(codec.OURS, wide=None))
  model = rate_model()
  assert model == OURS_RATE and narrow.wide_factor == 1.0
  for n in (800, 3932, 3933, 9000):  # wide positions from 100 pixels per Gaussian
    wide = 512 * 768 >= 100 * n
    assert model.bits(n, 512, 768) == narrow.bits(n, 512, 768) * (model.wide_factor if wide else 1)
  everywhere = rate_model(dataclasses.replace(codec.OURS, wide=WidePositions(2.0, 0.0)))
  assert everywhere.bits(9000, 512, 768) == pytest.approx(model.wide_factor *
                                                          narrow.bits(9000, 512, 768))
  # The rule on every encode, given in the quantizers instead, is the same model.
  assert rate_model(dataclasses.replace(
      codec.OURS, wide=None, quantizers=dataclasses.replace(codec.OURS.quantizers,
                                                            wide_sigma=2.0))) == everywhere


def _rate_model_files() -> dict:
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures",
                      "rate_model_files.json")
  with open(path) as f:
    return json.load(f)


def test_wide_factor_is_what_the_measured_pairs_saved():
  ratios = [p["bytes_wide"] / p["bytes_plain"] for p in _rate_model_files()["wide_pairs"]]
  assert len(ratios) >= 10
  assert np.median(ratios) == pytest.approx(codec.rate.WIDE_FACTOR, abs=5e-4)


def test_rate_model_predicts_the_files_it_was_fitted_on():
  records = _rate_model_files()["files"]
  assert len(records) == 96
  model = rate_model(dataclasses.replace(codec.OURS, wide=None))  # as these files were made
  errors = [model.bits(r["num_gaussians"], r["height"], r["width"]) / (8 * r["bytes"]) - 1
            for r in records]
  assert np.median(np.abs(errors)) < 0.015 and np.max(np.abs(errors)) < 0.055
  assert all(model.measured(r["num_gaussians"], r["height"], r["width"]) for r in records)


@pytest.mark.parametrize("size", [(32, 32), (512, 768)])
@pytest.mark.parametrize("miss", [0.9, 1.0, 1.07])
def test_corrected_rate_model_predicts_the_file_it_was_corrected_by(size, miss):
  model = rate_model()
  n = model.gaussians_for_bpp(0.3, 512, 768) if size == (512, 768) else 50
  corrected = model.corrected(miss * model.bits(n, *size), n, *size)
  assert corrected.bits(n, *size) == pytest.approx(miss * model.bits(n, *size), rel=1e-12)
  assert corrected.bits(2 * n, *size) == pytest.approx(miss * model.bits(2 * n, *size), rel=1e-12)
  assert corrected.measured_pixels_per_gaussian == model.measured_pixels_per_gaussian
  for bits, count in [(0, n), (-5.0, n), (float("nan"), n), (True, n), (1e4, 0), (1e4, 2.5),
                      (1e4, codec.format.MAX_GAUSSIANS + 1)]:
    with pytest.raises(InvalidInputError):
      model.corrected(bits, count, *size)


def test_encode_for_bpp_corrects_each_pass_by_the_last_file(target):
  lines = []
  result = codec.encode_for_bpp(target, 4.0, 5, 3, passes=3, log=lines.append)
  model = rate_model()
  first = result.passes[0]
  assert first.num_gaussians == model.gaussians_for_bpp(4.0, H, W)
  assert first.predicted_bpp == model.bpp(first.num_gaussians, H, W)
  for before, after in zip(result.passes, result.passes[1:]):
    model = model.corrected(before.bpp * H * W, before.num_gaussians, H, W)
    assert after.num_gaussians == model.gaussians_for_bpp(4.0, H, W)
  # Each pass is one encode, its N new; the kept file is the one closest to the target.
  assert len({p.num_gaussians for p in result.passes}) == len(result.passes) <= 3
  assert result.encoded.bpp == min((p.bpp for p in result.passes), key=lambda b: abs(b - 4.0))
  assert codec.read_header(result.encoded.data)[0].num_gaussians in {
      p.num_gaussians for p in result.passes}
  assert lines[0].startswith(f"pass 1: {first.num_gaussians} Gaussians (predicted ")
  assert len(result.passes) == 1 or lines[-1].startswith("kept pass ")
  for bad in (0, 1.5, True):
    with pytest.raises(InvalidInputError, match="passes"):
      codec.encode_for_bpp(target, 4.0, 5, 3, passes=bad)
