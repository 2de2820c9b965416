"""gi_jax.codec.pipeline: encode_image(s), CodecSettings, wide positions by pixels per Gaussian.
"""

import dataclasses

import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.pipeline import Candidate, WidePositions, override_wide
from gi_jax.codec import pipeline, quantize as qz
from gi_jax.codec.format import container
from gi_jax.errors import CodecError, InvalidInputError
from tests.codec.helpers import H, W


def _assert_best_candidate_kept(encoded, settings, sizes):
  """The file is the candidate with the best rd_score, and each candidate used its own K."""
  assert [c.codebook_size for c in encoded.candidates] == list(sizes)
  scores = [settings.rd_score(c.psnr, c.num_bytes) for c in encoded.candidates]
  kept = encoded.candidates[int(np.argmax(scores))]
  assert (kept.num_bytes, kept.psnr) == (len(encoded.data), encoded.tuned.psnr)
  assert encoded.tuned.quantized.codebooks.shape[1] == kept.codebook_size


def test_encode_images_batch(target):
  images = [target, 1 - target]
  settings = dataclasses.replace(codec.OURS, codebook_sizes=(4, 8))
  encoded = codec.encode_images(images, 40, 10, 4, settings=settings, backend="reference")
  for image, e in zip(images, encoded):
    decoded, info = codec.decode(e.data, backend="reference")
    assert abs(float(gi_jax.metrics.psnr(decoded, image)) - e.tuned.psnr) < 1e-3
    assert e.encode_seconds > e.entropy_seconds > 0
    _assert_best_candidate_kept(e, settings, (4, 8))


@pytest.mark.parametrize("settings", ["OURS", "PAPER"])
def test_encode_image_decodes_to_the_tuned_image(target, settings):
  settings = getattr(codec, settings)
  encoded = codec.encode_image(target, 48, 20, 10, settings=settings, backend="reference")
  image, info = codec.decode(encoded.data, backend="reference")
  assert info["bpp"] == encoded.bpp
  np.testing.assert_array_equal(image, encoded.tuned.render("reference"))
  assert abs(float(gi_jax.metrics.psnr(image, target)) - encoded.tuned.psnr) < 1e-3
  grid = info["quantized"].position_cells
  assert grid == (None if settings is codec.PAPER else (4 * W, 4 * H))
  assert encoded.encode_seconds >= encoded.entropy_seconds > 0
  assert encoded.candidates == (
      Candidate(settings.quantizers.codebook_size, len(encoded.data), encoded.tuned.psnr),)


@pytest.mark.parametrize("rd_slope", [0.0, 1.7, 1e6])
def test_encode_image_keeps_the_codebook_size_with_the_best_rd_score(target, rd_slope):
  settings = dataclasses.replace(codec.OURS, codebook_sizes=(2, 16), rd_slope=rd_slope)
  encoded = codec.encode_image(target, 48, 20, 10, settings=settings, backend="reference")
  _assert_best_candidate_kept(encoded, settings, (2, 16))
  small, large = encoded.candidates
  if rd_slope == 0.0:  # quality alone
    assert encoded.tuned.psnr == max(small.psnr, large.psnr)
  if rd_slope == 1e6:  # size alone
    assert len(encoded.data) == min(small.num_bytes, large.num_bytes)
  image, _ = codec.decode(encoded.data, backend="reference")
  assert abs(float(gi_jax.metrics.psnr(image, target)) - encoded.tuned.psnr) < 1e-3


@pytest.mark.parametrize("bad", [dict(rd_slope=-1.0), dict(rd_slope=float("nan")),
                                 dict(codebook_sizes=(16, 1)), dict(codebook_sizes=(300,)),
                                 dict(codebook_sizes=(16, 16)), dict(codebook_sizes=(16.5,)),
                                 dict(codebook_sizes=(16, 32),
                                      quantizers=qz.QuantizerConfig(color_bits=6)),
                                 dict(lr_schedule="linear"), dict(finetune_lr_schedule="linear")])
def test_codec_settings_refuse_impossible_choices(bad):
  with pytest.raises(InvalidInputError):
    dataclasses.replace(codec.OURS, **bad)


@pytest.mark.parametrize("bad", [dict(wide=WidePositions(2.0), quantizers=qz.QuantizerConfig(
    position_step=0.25, wide_sigma=2.0)), dict(wide=WidePositions(2.0),
                                                quantizers=qz.QuantizerConfig())])
def test_codec_settings_refuse_impossible_wide_positions(bad):
  with pytest.raises(InvalidInputError, match="wide"):
    dataclasses.replace(codec.OURS, **bad)


@pytest.mark.parametrize("sigma,pixels", [(0.0, 64.0), (0.3, 64.0), (2.0, -1.0),
                                          (2.0, float("inf")), (2.0, float("nan")), (True, 64.0)])
def test_wide_positions_refuse_impossible_settings(sigma, pixels):
  with pytest.raises(InvalidInputError):
    WidePositions(sigma, pixels)


def test_wide_positions_apply_from_their_pixels_per_gaussian():
  wide = WidePositions(2.0, 64.0)
  assert wide.applies(512, 768, 6144) and not wide.applies(512, 768, 6145)
  assert WidePositions(2.0, 0.0).applies(1, 1, 10**6)
  assert codec.OURS.wide == WidePositions(2.0, 100.0)  # 393,216 / 100: up to 3,932
  configs = [codec.OURS.candidate_quantizers(512, 768, n)[0] for n in (800, 3932, 3933, 9000)]
  assert [c.wide_sigma for c in configs] == [2.0, 2.0, 0.0, 0.0]
  assert all(dataclasses.replace(c, wide_sigma=0.0) == codec.OURS.quantizers for c in configs)
  choice = dataclasses.replace(codec.OURS, codebook_sizes=(16, 32))
  assert [(c.codebook_size, c.wide_sigma) for c in choice.candidate_quantizers(512, 768, 800)] == [
      (16, 2.0), (32, 2.0)]
  assert codec.PAPER.wide is None and codec.PAPER.quantizers_for(512, 768, 10).wide_sigma == 0.0
  # The command lines' overrides: None keeps the settings' own, sigma 0 turns them off.
  assert override_wide(codec.OURS.wide) is codec.OURS.wide
  assert override_wide(codec.OURS.wide, 0.0, 10.0) is None
  assert override_wide(None, min_pixels_per_gaussian=0.0) == WidePositions(2.0, 0.0)
  assert override_wide(codec.OURS.wide, 1.5) == WidePositions(1.5, 100.0)


def test_settings_say_which_encodes_have_wide_positions():
  every = dataclasses.replace(codec.OURS, wide=None, quantizers=dataclasses.replace(
      codec.OURS.quantizers, wide_sigma=1.5))
  assert every.wide_positions == WidePositions(1.5, 0.0)
  assert codec.OURS.wide_positions is codec.OURS.wide and codec.PAPER.wide_positions is None


@pytest.mark.parametrize("encoder", ["encode_image", "encode_images"])
def test_encodes_use_wide_positions_by_pixels_per_gaussian(target, encoder):
  # 32×32 pixels: 8 Gaussians have 128 each (wide positions), 16 have 64 (none).
  for n, wide_sigma in [(8, 2.0), (16, 0.0)]:
    images = target if encoder == "encode_image" else [target, target]
    out = getattr(codec, encoder)(images, n, 4, 2, backend="reference")
    for encoded in [out] if encoder == "encode_image" else out:
      assert encoded.quantizers.wide_sigma == encoded.tuned.quantized.wide_sigma == wide_sigma
      assert codec.read_header(encoded.data)[0].wide_sigma == wide_sigma
      image, _ = codec.decode(encoded.data, backend="reference")
      np.testing.assert_array_equal(image, encoded.tuned.render("reference"))


@pytest.mark.parametrize("encoder", ["encode_image", "encode_images"])
def test_fine_tuning_follows_the_settings_schedule(target, encoder, monkeypatch):
  settings = dataclasses.replace(codec.OURS, lr_schedule="cosine",
                                 finetune_lr_schedule="hold_cosine")
  seen = []
  make_schedule = gi_jax.optim.make_schedule
  monkeypatch.setattr(gi_jax.optim, "make_schedule",
                      lambda name, *a: seen.append(name) or make_schedule(name, *a))
  images = target if encoder == "encode_image" else [target, target]
  getattr(codec, encoder)(images, 20, 2, 2, settings=settings, backend="reference")
  assert [name for name in seen if name != "cosine"] == ["hold_cosine"]


@pytest.mark.parametrize("encoder", ["encode_image", "encode_images"])
def test_more_gaussians_than_a_file_holds_fail_before_fitting(target, encoder, monkeypatch):
  fail = lambda *a, **k: pytest.fail("fitted")
  monkeypatch.setattr(pipeline, "fit", fail)
  monkeypatch.setattr(pipeline, "fit_batch", fail)
  n = container.MAX_GAUSSIANS + 1
  images = target if encoder == "encode_image" else [target]
  with pytest.raises(CodecError, match=f"1 to {n - 1} Gaussians, asked for {n}"):
    getattr(codec, encoder)(images, n, 1, 1)
  with pytest.raises(InvalidInputError, match="num_gaussians"):
    getattr(codec, encoder)(images, 0, 1, 1)
