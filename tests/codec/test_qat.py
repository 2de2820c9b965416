"""gi_jax.codec.qat: quantization-aware fine-tuning (one image, a batch, sharded), the loss's
state carried through the training driver.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.errors import InvalidInputError
from gi_jax.fitting import optimize
from gi_jax.sharding import default_mesh
from tests.codec.helpers import assert_same_symbols


def test_loss_state_is_carried_exactly_through_optimize():
  """A stateful loss's state is stored as the loss returns it, next to a learned leaf, and an
  overflowing call that is redone does not apply its state twice."""
  big = jnp.asarray([16_000_001.0, 3.0, 65535.0])

  def make_loss(capacity):
    def loss_fn(w, target, binned, state):
      new = jnp.where(state[0] < 16_000_005, state + 1, state)
      return jnp.sum((w - target) ** 2), (jnp.int32(2), new)  # 2 > capacity 1: one redo
    return loss_fn

  out = optimize(jnp.zeros(3), jnp.ones(3), 7, make_loss, optimizer=optax.sgd(0.1), capacity=1,
                 steps_per_call=3, aux=big)
  assert out.capacity >= 2
  np.testing.assert_array_equal(out.aux, big + jnp.asarray([4.0, 4, 4]))
  assert float(jnp.abs(out.params - 1).max()) < 0.5


def test_finetune_keeps_the_best_and_reports_the_decoders_psnr(tuned, target):
  fitted, result = tuned
  assert result.steps == 20 and 0 <= result.best_step <= 20
  assert result.psnr >= result.initial_psnr
  image = result.render("reference")
  assert abs(float(gi_jax.metrics.psnr(image, target)) - result.psnr) < 1e-3
  # Quantization costs something, but the fine-tuned codec stays near the float fit.
  fit_psnr = float(gi_jax.metrics.psnr(fitted.render("reference"), target))
  assert result.psnr > fit_psnr - 3.0


def test_finetune_that_diverges_keeps_its_best_step_before(tuned, target):
  # A rate this large makes the final state non-finite: the encode keeps the best step seen, and
  # says so, instead of failing on the final state (kodim12 once diverged through a NaN gradient).
  fitted, _ = tuned
  with pytest.warns(UserWarning, match="fine-tuning diverged"):
    result = codec.finetune(fitted, target, steps=10, learning_rate=1e30, progress=False)
  assert not np.isfinite(np.asarray(result.gaussians.cov_raw)).all()
  assert np.isfinite(result.psnr) and result.best_step < 10
  assert codec.decode(codec.encode(result.quantized, *target.shape[:2]))[0].shape == target.shape
  with pytest.warns(UserWarning, match=r"diverged \(image 0 of the batch\)") as caught:
    [batched] = codec.finetune_batch([fitted], [target], 10, learning_rate=1e30, progress=False)
  # The caller's line, however deep the check (numpy's overflow warnings are caught too).
  assert {w.filename for w in caught if "diverged" in str(w.message)} == {__file__}
  assert np.isfinite(batched.psnr)


def test_finetune_is_finetune_batch_of_one_bit_for_bit(tuned, target):
  fitted, single = tuned
  records = []
  [batch] = codec.finetune_batch([fitted], [target], steps=20, seeds=[0], steps_per_call=10,
                                 progress=records.append)
  assert_same_symbols(batch.quantized, single.quantized)
  for a, b in zip(jax.tree.leaves((batch.gaussians, batch.quantizers)),
                  jax.tree.leaves((single.gaussians, single.quantizers))):
    np.testing.assert_array_equal(a, b)
  assert (batch.mse, batch.best_step) == (single.mse, single.best_step)
  assert ([(r["step"], r["loss"]) for r in batch.history] ==
          [(r["step"], r["loss"]) for r in single.history])
  assert [len(r["psnr"]) for r in records] == [1, 1]


def test_finetune_batch_matches_single_finetunes(target):
  images = [target, target[::-1]]
  fits = gi_jax.fit_batch(images, 48, 20, progress=False, steps_per_call=20)
  config = codec.QuantizerConfig(position_step=0.5)
  batch = codec.finetune_batch(fits, images, 6, config=config, seeds=[3, 4], progress=False,
                               steps_per_call=3, backend="reference")
  for fitted, image, seed, got in zip(fits, images, [3, 4], batch):
    one = codec.finetune(fitted, image, 6, config=config, seed=seed, progress=False,
                         steps_per_call=3, backend="reference")
    assert got.psnr == pytest.approx(one.psnr, abs=0.02)
    assert got.initial_psnr == pytest.approx(one.initial_psnr, abs=1e-4)
    assert [r["step"] for r in got.history] == [3, 6]
    assert np.mean(got.quantized.cov_codes == one.quantized.cov_codes) > 0.95
  with pytest.raises(InvalidInputError, match="one size"):
    codec.finetune_batch(fits, [target, target[:16]], 1, progress=False)


def test_finetune_batch_that_cannot_fit_is_a_clear_error(target, monkeypatch):
  fits = [gi_jax.init_gaussians(jax.random.key(i), 48, *target.shape[:2]) for i in range(2)]
  monkeypatch.setattr(gi_jax.memory, "_free_bytes_per_device", lambda devices: 1000)
  with pytest.raises(gi_jax.errors.ImageTooLargeError, match="not even one image"):
    codec.finetune_batch(fits, [target, target], 1, progress=False)


def test_finetune_batch_sharded_equals_one_device(target):
  assert len(jax.devices()) == 4  # tests/conftest.py
  # 3 images on 4 devices: padded with a copy of the last one, whose result is dropped.
  images = [target, target[::-1], 1 - target]
  fits = gi_jax.fit_batch(images, 48, 20, progress=False, steps_per_call=20)
  config = codec.QuantizerConfig(position_step=0.5)
  kwargs = dict(config=config, seeds=[3, 4, 5], steps_per_call=3, backend="reference")
  records = []
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
  sharded = codec.finetune_batch(fits, images, 6, progress=records.append, mesh=mesh, **kwargs)
  single = codec.finetune_batch(fits, images, 6, progress=False, mesh=default_mesh(1),
                                **kwargs)
  assert len(sharded) == 3 and all(len(r["psnr"]) == 3 for r in records)
  for a, b in zip(sharded, single):
    assert a.psnr == pytest.approx(b.psnr, abs=1e-3)
    assert a.best_step == b.best_step
    assert np.mean(a.quantized.cov_codes == b.quantized.cov_codes) > 0.99
