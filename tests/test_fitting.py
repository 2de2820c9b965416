"""fit: end to end on a Kodak crop, determinism, overflow recovery, composition, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import gi_jax
from gi_jax import errors, fitting
from gi_jax.io import sample_image_path
from gi_jax.render import clip_unit

# 64×64 crop of kodim23 (the bundled sample), 400 Gaussians, 600 steps of the paper's Adan
# (measured: 26.3 dB).
CROP_PSNR_THRESHOLD = 25.0


@pytest.fixture(scope="module")
def crop():
  image = np.asarray(Image.open(sample_image_path()).convert("RGB"), np.float32) / 255.0
  return image[200:264, 300:364]


def test_end_to_end_fit_reaches_threshold(crop):
  result = gi_jax.fit(crop, 400, 600, seed=0, steps_per_call=300, progress=False)
  assert result.steps == 600
  assert [r["step"] for r in result.history] == [300, 600]
  rendered = result.render()
  psnr = -10 * np.log10(np.mean((np.asarray(rendered) - crop) ** 2))
  assert psnr >= CROP_PSNR_THRESHOLD, psnr
  assert result.history[-1]["psnr"] == pytest.approx(psnr, abs=0.5)
  assert result.history[-1]["learning_rate"] == pytest.approx(1e-3)
  assert result.fit_seconds > 0 and result.compile_seconds > 0


def test_same_seed_same_result_and_overflow_recovery_is_exact(crop):
  image = crop[:32, :32]
  a = gi_jax.fit(image, 150, 60, seed=1, steps_per_call=30, progress=False)
  b = gi_jax.fit(image, 150, 60, seed=1, steps_per_call=30, progress=False)
  # A capacity far too small forces re-binning and redoing steps: same result, bit for bit.
  c = gi_jax.fit(image, 150, 60, seed=1, steps_per_call=30, progress=False, capacity=16)
  assert c.capacity > 16
  for x, y, z in zip(jax.tree.leaves(a.gaussians), jax.tree.leaves(b.gaussians),
                     jax.tree.leaves(c.gaussians)):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)
  d = gi_jax.fit(image, 150, 60, seed=2, steps_per_call=30, progress=False)
  assert not np.array_equal(d.gaussians.means_raw, a.gaussians.means_raw)


def test_fits_of_one_size_and_setting_share_a_device_call(crop, monkeypatch):
  # Another step count or rate is the same program (both are numbers in the optimizer's state);
  # another clip gradient or recipe step is not. Reused or fresh, the same result to the bit.
  built = []
  make_run_steps = fitting.make_run_steps
  monkeypatch.setattr(fitting, "make_run_steps", lambda *a, **k: built.append(1) or
                      make_run_steps(*a, **k))
  monkeypatch.setattr(fitting, "_DEVICE_CALLS", type(fitting._DEVICE_CALLS)())
  image = crop[:32, :32]
  fit = lambda steps, **kw: gi_jax.fit(image, 150, steps, seed=1, steps_per_call=30,  # noqa: E731
                                       progress=False, **kw)
  fit(60)
  reused = fit(30, learning_rate=5e-3)
  assert len(built) == 1
  fit(30, clip_gradient="straight_through")
  fit(30, recipe=gi_jax.recipes.BEST.replace(init="random"))
  assert len(built) == 3
  fitting.clear_device_calls()
  fresh = fit(30, learning_rate=5e-3)
  assert len(built) == 4
  for x, y in zip(jax.tree.leaves(reused.gaussians), jax.tree.leaves(fresh.gaussians)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("batch", [(), (3,)])
def test_the_device_loop_carries_the_state_packed_and_gives_it_back_whole(batch):
  keys = jax.random.split(jax.random.key(0), 3)
  init = lambda key: gi_jax.init_gaussians(key, 50, 32, 48)
  gaussians = jax.vmap(init)(keys) if batch else init(keys[0])
  # A leaf shaped [..., 50, k] of another dtype, and scalars, travel unpacked.
  state = fitting.init_state(gaussians, fitting.default_optimizer(), loss_shape=batch,
                             aux=jnp.zeros(batch + (50, 2), jnp.int32))
  state = jax.tree.map(lambda x: x + jnp.arange(x.size, dtype=x.dtype).reshape(x.shape), state)
  layout = fitting.CarryLayout.of(state)
  packed, rest = layout.pack(state)
  # The parameters and Adan's four moments side by side: 5 × (2 + 3 + 3) columns.
  assert packed.shape == batch + (50, 40) and len(layout.packed) == 15
  assert any(x.dtype == jnp.int32 and x.ndim >= 2 for x in rest)
  back = layout.unpack((packed, rest))
  assert jax.tree.structure(back) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
    assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
  # Parameters without a per-Gaussian array: nothing to pack.
  bare = fitting.init_state(jnp.ones(3), fitting.default_optimizer())
  layout = fitting.CarryLayout.of(bare)
  assert layout.pack(bare)[0] is None
  assert np.array_equal(layout.unpack(layout.pack(bare)).params, bare.params)


def test_rs_parameterization_fits(crop):
  result = gi_jax.fit(crop[:32, :32], 150, 100, parameterization="rs", steps_per_call=20,
                      progress=False)
  assert result.gaussians.parameterization == "rs"
  psnrs = [r["psnr"] for r in result.history]
  assert psnrs[-1] > psnrs[0] + 2, psnrs


def test_cosine_schedule_decays_over_the_fit(crop):
  result = gi_jax.fit(crop[:32, :32], 100, 40, learning_rate=2e-2, lr_schedule="cosine",
                      steps_per_call=20, progress=False)
  # Update 19 (0-based) is half way: lr·(0.99·½(1 + cos(π·19/40)) + 0.01); update 39 near 1%.
  lrs = [r["learning_rate"] for r in result.history]
  assert lrs[0] == pytest.approx(2e-2 * (0.99 * 0.5 * (1 + np.cos(np.pi * 19 / 40)) + 0.01))
  assert lrs[1] < 1e-3
  with pytest.raises(gi_jax.errors.InvalidInputError, match="schedule"):
    gi_jax.fit(crop[:16, :16], 10, 5, lr_schedule="warmup", progress=False)


@pytest.mark.parametrize("jit", [False, True])
def test_clip_unit_values_agree_and_only_the_gradient_differs(jit):
  image = jnp.asarray([[-0.5, 0.001, 0.25], [0.75, 1.5, 0.999]])
  clip = jax.jit(clip_unit, static_argnums=1) if jit else clip_unit
  exact, through = clip(image, "exact"), clip(image, "straight_through")
  np.testing.assert_array_equal(exact, jnp.clip(image, 0.0, 1.0))
  np.testing.assert_array_equal(through, exact)
  grad = lambda mode: jax.grad(lambda x: jnp.sum(clip(x, mode) * jnp.arange(6.0).reshape(2, 3)))
  np.testing.assert_array_equal(grad("exact")(image), [[0, 1, 2], [3, 0, 5]])
  np.testing.assert_array_equal(grad("straight_through")(image), [[0, 1, 2], [3, 4, 5]])
  batched = jax.vmap(jax.grad(lambda x: jnp.sum(clip(x, "straight_through"))))(image)
  np.testing.assert_array_equal(batched, np.ones((2, 3)))


def _stall_warning_files(record) -> set[str]:
  """The files the "may stall" warnings in ``record`` name as their source."""
  return {w.filename for w in record if "may stall" in str(w.message)}


def test_straight_through_clip_frees_pixels_the_exact_gradient_leaves_saturated(crop):
  # 2,000 Gaussians on 16×16 pixels overshoot past 1 within a few steps at this learning rate;
  # with the clip's exact gradient nothing pulls those pixels back and the fit stalls (18 dB
  # measured at 100 steps), with the straight-through one it goes on (64 dB).
  image = crop[:16, :16]
  options = dict(init="gradient", learning_rate=3e-2, lr_schedule="cosine", steps_per_call=100,
                 progress=False)
  with pytest.warns(UserWarning, match="may stall") as fit_warning:  # the library says so
    exact = gi_jax.fit(image, 2000, 100, **options)
  assert _stall_warning_files(fit_warning) == {__file__}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    through = gi_jax.fit(image, 2000, 100, clip_gradient="straight_through", **options)
    # fit is fit_batch of one image (test_batch.py), so the batched path is checked for the
    # warning only.
    gi_jax.fit_batch([image], 2000, 0, seeds=[0], clip_gradient="straight_through", **options)
  assert not _stall_warning_files(caught)
  assert exact.history[-1]["psnr"] < 25 and through.history[-1]["psnr"] > 50
  with pytest.warns(UserWarning, match="may stall") as batch_warning:
    gi_jax.fit_batch([image], 2000, 0, seeds=[0], progress=False)
  assert _stall_warning_files(batch_warning) == {__file__}  # the caller's line, not the library's
  with pytest.warns(UserWarning, match="may stall") as dataset_warning:  # two calls deeper
    gi_jax.fit_dataset([image], 2000, 0, progress=False)
  assert _stall_warning_files(dataset_warning) == {__file__}


def test_bad_clip_gradient(crop):
  with pytest.raises(errors.InvalidInputError, match="clip_gradient"):
    gi_jax.fit(crop[:16, :16], 10, 1, clip_gradient="leaky", progress=False)
  with pytest.raises(errors.InvalidInputError, match="clip_gradient"):
    gi_jax.fit_batch([crop[:16, :16]], 10, 1, clip_gradient="leaky", progress=False)
  with pytest.raises(errors.InvalidInputError, match="blend='sum' only"):
    gi_jax.fit(crop[:16, :16], 10, 1, clip_gradient="straight_through", blend="alpha",
               progress=False)


def test_train_step_composes_with_jit_vmap_grad(crop):
  height, width = 24, 24
  targets = jnp.stack([crop[:24, :24], crop[24:48, :24]])
  optimizer = fitting.default_optimizer()
  loss_fn = fitting.render_loss(height, width, "reference")(1024)
  step = fitting.make_train_step(loss_fn, optimizer)
  gs = jax.vmap(lambda k: gi_jax.init_gaussians(k, 60, height, width))(
      jax.random.split(jax.random.key(0), 2))
  states = jax.vmap(lambda g: fitting.init_state(g, optimizer))(gs)
  batched = jax.jit(jax.vmap(step))(states, targets)
  for i in range(2):
    one = jax.jit(step)(fitting.init_state(jax.tree.map(lambda x: x[i], gs), optimizer),
                        targets[i])
    np.testing.assert_allclose(batched.params.means_raw[i], one.params.means_raw, atol=1e-6)
    np.testing.assert_allclose(batched.loss[i], one.loss, rtol=1e-6)
  # The loss is differentiable end to end, here twice (grad of a grad-based update).
  g0 = jax.tree.map(lambda x: x[0], gs)
  hess_vec = jax.grad(lambda g: jnp.sum(jax.grad(lambda h: loss_fn(h, targets[0])[0])(g).colors))
  assert jnp.isfinite(hess_vec(g0).colors).all()


@pytest.mark.parametrize("image,match", [
    (np.zeros((8, 8), np.float32), "shape"),
    (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    (np.full((8, 8, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((8, 8, 3), np.uint8), "dtype"),
    (np.zeros((0, 0, 3), np.float32), "height must be >= 1"),
    (np.zeros((4, 0, 3), np.float32), "width must be >= 1"),
])
def test_bad_images(image, match):
  with pytest.raises(errors.InvalidInputError, match=match):
    gi_jax.fit(image, 10, 1, progress=False)
  with pytest.raises(errors.InvalidInputError, match=match):
    gi_jax.fit_batch(image[None], 10, 1, progress=False)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, -1e-3, True, "0.1"])
def test_bad_learning_rates_fail_before_fitting(monkeypatch, rate):
  monkeypatch.setattr(gi_jax.fitting, "initialize", lambda *a, **k: pytest.fail("initialised"))
  image = np.zeros((8, 8, 3), np.float32)
  with pytest.raises(errors.InvalidInputError, match="learning_rate must be a finite number > 0"):
    gi_jax.fit(image, 10, 1, learning_rate=rate, progress=False)
  with pytest.raises(errors.InvalidInputError, match="learning_rate must be a finite number > 0"):
    gi_jax.fit_batch(image[None], 10, 1, learning_rate=rate, progress=False)
  # The codec's settings check both of theirs when made, before any encode starts.
  from gi_jax import codec
  for field in ("learning_rate", "finetune_learning_rate"):
    with pytest.raises(errors.InvalidInputError, match="learning_rate must be"):
      codec.CodecSettings(**{field: rate})


@pytest.mark.parametrize("num,steps,match", [(0, 1, "num_gaussians"), (10, -1, "steps")])
def test_bad_counts(num, steps, match):
  with pytest.raises(errors.InvalidInputError, match=match):
    gi_jax.fit(np.zeros((8, 8, 3), np.float32), num, steps, progress=False)


def test_a_count_beyond_memory_fails_before_allocating(monkeypatch):
  # 10**12 Gaussians would need petabytes: a clear error, not the kernel's out-of-memory killer.
  # Initialisation must not run (it would allocate them).
  monkeypatch.setattr(gi_jax.fitting, "initialize", lambda *a, **k: pytest.fail("initialised"))
  with pytest.raises(errors.ImageTooLargeError, match="10000000000000 Gaussians"):
    gi_jax.fit(np.zeros((8, 8, 3), np.float32), 10**13, 1, progress=False)
