"""Tests of gi_jax.optim: Adan against a NumPy transcription of docs/design.md §4, and the schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gi_jax import optim
from gi_jax.errors import InvalidInputError

B1, B2, B3, EPS = 0.98, 0.92, 0.99, 1e-8
STEPS = 20


def numpy_adan(grads_fn, params, steps, lr_fn):
  """docs/design.md §4 transcribed literally in float64 NumPy, one dict of arrays at a time.

  Args:
    grads_fn: (params dict, step index) -> gradient dict.
    params: initial parameter dict.
    steps: number of updates.
    lr_fn: 0-based update count -> learning rate.

  Returns:
    The list of parameter dicts after each update.
  """
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  n = {k: np.zeros_like(x) for k, x in p.items()}
  prev = None
  history = []
  for step in range(1, steps + 1):
    g = {k: np.asarray(x, np.float64) for k, x in grads_fn(p, step - 1).items()}
    lr = lr_fn(step - 1)
    for key in p:
      diff = np.zeros_like(g[key]) if prev is None else g[key] - prev[key]
      m[key] = B1 * m[key] + (1 - B1) * g[key]
      v[key] = B2 * v[key] + (1 - B2) * diff
      n[key] = B3 * n[key] + (1 - B3) * (g[key] + B2 * diff)**2
      denom = np.sqrt(n[key]) / np.sqrt(1 - B3**step) + EPS
      p[key] = p[key] - (lr * m[key] / ((1 - B1**step) * denom) + lr * B2 * v[key] /
                         ((1 - B2**step) * denom))
    prev = g
    history.append({k: x.copy() for k, x in p.items()})
  return history


def make_problem(seed=0):
  """A small quadratic with a random curvature, target and per-step gradient noise.

  The gradient depends on the current parameters (so the trajectories must agree for the test to
  pass) and on a fixed noise sequence (so diff is not a smooth function of the step).
  """
  rng = np.random.default_rng(seed)
  # "a" and "c" differ only in their last axis, so Adan updates them side by side as one array.
  shapes = {"a": (3, 4), "b": (5,), "c": (3, 2), "s": ()}
  curv = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items()}
  target = {k: rng.normal(size=s) for k, s in shapes.items()}
  noise = [{k: 0.3 * rng.normal(size=s) for k, s in shapes.items()} for _ in range(STEPS)]
  init = {k: rng.normal(size=s) for k, s in shapes.items()}

  def grads_fn(p, i):
    return {k: curv[k] * (np.asarray(p[k], np.float64) - target[k]) + noise[i][k] for k in p}

  return init, grads_fn


def run_optax(opt, init, grads_fn, dtype):
  """Runs ``opt`` with a jitted update for STEPS steps; gradients are computed in NumPy."""
  params = {k: jnp.asarray(v, dtype) for k, v in init.items()}
  state = opt.init(params)
  update = jax.jit(opt.update)
  history = []
  for i in range(STEPS):
    g = {k: jnp.asarray(v, dtype) for k, v in grads_fn(params, i).items()}
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    history.append({k: np.asarray(v) for k, v in params.items()})
  return history, state


@pytest.mark.parametrize("use_schedule", [False, True])
def test_matches_numpy_float64(use_schedule):
  init, grads_fn = make_problem(1)
  # A short step_size so the 20 steps cross two decays.
  lr = optim.paper_schedule(1e-2, step_size=7, gamma=0.5) if use_schedule else 1e-2
  lr_fn = (lambda c: 1e-2 * 0.5**(c // 7)) if use_schedule else (lambda c: 1e-2)
  want = numpy_adan(grads_fn, init, STEPS, lr_fn)
  with jax.enable_x64(True):
    got, state = run_optax(optim.adan(lr), init, grads_fn, jnp.float64)
    assert int(state.count) == STEPS
  for w, g in zip(want, got):
    for key in w:
      assert g[key].dtype == np.float64
      np.testing.assert_allclose(g[key], w[key], rtol=1e-12, atol=1e-14)
  # The parameters actually moved by many ulps, so the comparison above is not vacuous.
  assert np.abs(want[-1]["a"] - init["a"]).max() > 1e-2


def test_matches_numpy_float32():
  init, grads_fn = make_problem(2)
  want = numpy_adan(grads_fn, init, STEPS, lambda c: 1e-2)
  got, _ = run_optax(optim.adan(1e-2), init, grads_fn, jnp.float32)
  for w, g in zip(want, got):
    for key in w:
      assert g[key].dtype == np.float32
      np.testing.assert_allclose(g[key], w[key], rtol=1e-6, atol=1e-6)


def test_first_step_is_lr_times_sign():
  # At k = 1 the bias corrections make m_hat = g and sqrt(n_hat) = |g|, and diff = 0.
  g = {"w": jnp.array([3.0, -0.5, 1e-3])}
  opt = optim.adan(1e-3)
  updates, state = opt.update(g, opt.init(g))
  np.testing.assert_allclose(updates["w"], -1e-3 * np.sign(g["w"]), rtol=1e-5)
  np.testing.assert_array_equal(state.prev_grad["w"], g["w"])
  np.testing.assert_array_equal(state.nu_diff["w"], 0.0)


def test_is_not_optax_adan():
  # Guards against someone "simplifying" to optax.adan, whose diff weighting differs (docs/design.md §4).
  init, grads_fn = make_problem(3)
  ours, _ = run_optax(optim.adan(1e-2), init, grads_fn, jnp.float32)
  theirs, _ = run_optax(optax.adan(1e-2, b1=B1, b2=B2, b3=B3, eps=EPS), init, grads_fn,
                        jnp.float32)
  assert np.abs(ours[-1]["a"] - theirs[-1]["a"]).max() > 1e-5


def test_paper_schedule_halves_every_20000():
  sched = optim.paper_schedule()
  jitted = jax.jit(sched)
  for count, want in [(0, 1e-3), (19999, 1e-3), (20000, 5e-4), (39999, 5e-4), (40000, 2.5e-4),
                      (49999, 2.5e-4)]:
    np.testing.assert_allclose(sched(count), want, rtol=1e-7)
    np.testing.assert_allclose(jitted(jnp.int32(count)), want, rtol=1e-7)
  np.testing.assert_allclose(optim.paper_schedule(2.0, step_size=3, gamma=0.1)(7), 0.02, rtol=1e-6)
  with pytest.raises(InvalidInputError, match="step_size"):
    optim.paper_schedule(step_size=0)


def test_schedule_is_called_with_zero_based_count():
  seen = []
  # A schedule that records what it is called with (not jitted, so it sees concrete counts).
  def sched(count):
    seen.append(int(count))
    return 1e-3
  opt = optim.adan(sched)
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  for _ in range(3):
    _, state = opt.update(params, state)
  assert seen == [0, 1, 2]


def test_make_schedule_by_name():
  np.testing.assert_allclose(optim.make_schedule("paper", 1e-3, 50)(40_000), 2.5e-4, rtol=1e-6)
  cosine = optim.make_schedule("cosine", 1e-2, 1000)
  np.testing.assert_allclose([cosine(0), cosine(500), cosine(1000), cosine(5000)],
                             [1e-2, 0.505e-2, 1e-4, 1e-4], rtol=1e-5)
  # Held for 800 of 1,000 updates, then a cosine to 1% over the last 200.
  hold = optim.make_schedule("hold_cosine", 1e-2, 1000)
  np.testing.assert_allclose([hold(0), hold(799), hold(800), hold(900), hold(1000), hold(5000)],
                             [1e-2, 1e-2, 1e-2, 0.505e-2, 1e-4, 1e-4], rtol=1e-5)
  np.testing.assert_allclose(optim.make_schedule("hold_cosine", 1e-2, 1)(0), 1e-2, rtol=1e-6)
  with pytest.raises(InvalidInputError, match="schedule"):
    optim.make_schedule("linear", 1e-3, 10)


def test_a_schedules_numbers_are_state_so_one_program_serves_every_rate_and_length():
  params = {"w": jnp.ones(3)}

  def program(schedule):
    opt = optim.adan(schedule)
    return jax.jit(opt.update).lower(params, opt.init(params)).as_text()

  for name in optim.SCHEDULES:
    assert program(optim.make_schedule(name, 3e-2, 1000)) == program(
        optim.make_schedule(name, 1e-3, 37))


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_schedule_values_match_optax_compiled_with_the_numbers_as_constants(name):
  # Inside a compiled step, as a fit evaluates it: the same bits as optax's schedule of the name.
  lr, steps = 3e-2, 300
  decay = max(round(steps * optim.HOLD_COSINE_DECAY_FRACTION), 1)
  reference = {
      "paper": optim.paper_schedule(lr),
      "cosine": optax.cosine_decay_schedule(lr, steps, alpha=0.01),
      "hold_cosine": optax.join_schedules(
          [optax.constant_schedule(lr), optax.cosine_decay_schedule(lr, decay, alpha=0.01)],
          [steps - decay])}[name]
  schedule = optim.make_schedule(name, lr, steps)

  def values(rate, numbers):
    return jax.lax.scan(lambda c, _: (c + 1, rate(c, numbers)), jnp.int32(0), None,
                        length=steps + 2)[1]

  want = jax.jit(lambda: values(lambda c, _: reference(c), None))()
  got = jax.jit(lambda numbers: values(schedule.value, numbers))(schedule.numbers())
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(schedule(np.arange(steps + 2)), want, rtol=1e-6)


def test_chain_and_scan_under_jit():
  target = jnp.array([1.0, -2.0, 0.5])
  loss = lambda p: jnp.sum((p["x"] - target)**2)
  opt = optax.chain(optax.identity(), optim.adan(optim.paper_schedule(5e-2, step_size=100)))
  alone = optim.adan(optim.paper_schedule(5e-2, step_size=100))

  def fit(params, tx_state, tx_update):
    def body(carry, _):
      p, s = carry
      u, s = tx_update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), loss(p)
    return jax.lax.scan(body, (params, tx_state), None, length=300)

  params = {"x": jnp.zeros(3)}
  fit = jax.jit(fit, static_argnums=2)
  (p_chain, _), losses = fit(params, opt.init(params), opt.update)
  (p_alone, _), _ = fit(params, alone.init(params), alone.update)
  np.testing.assert_allclose(p_chain["x"], p_alone["x"], rtol=1e-6)
  assert losses[-1] < 1e-3 * losses[0]


def test_vmap_over_independent_problems():
  opt = optim.adan(1e-2)
  rng = np.random.default_rng(4)
  params = {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}  # 4 problems of 6 params
  grads = [jnp.asarray(rng.normal(size=(4, 6)), jnp.float32) for _ in range(5)]
  state = jax.vmap(opt.init)(params)
  assert state.count.shape == (4,)
  vupdate = jax.jit(jax.vmap(opt.update))
  for g in grads:
    updates, state = vupdate({"w": g}, state, params)
    params = optax.apply_updates(params, updates)
  # Sequential reference, problem by problem.
  rng = np.random.default_rng(4)
  start = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  for row in range(4):
    p = {"w": start[row]}
    s = opt.init(p)
    for g in grads:
      u, s = opt.update({"w": g[row]}, s, p)
      p = optax.apply_updates(p, u)
    np.testing.assert_allclose(params["w"][row], p["w"], rtol=1e-6, atol=1e-7)


def test_empty_tree():
  opt = optim.adan()
  updates, state = opt.update({}, opt.init({}))
  assert updates == {} and int(state.count) == 1


def test_leaves_that_differ_only_in_their_last_axis_are_updated_side_by_side():
  leaves = [jnp.zeros((3, 4)), jnp.zeros(5), jnp.zeros((3, 2)), jnp.zeros(()), jnp.zeros(()),
            jnp.zeros((3, 2), jnp.int32)]
  assert optim.side_by_side_groups(leaves) == [[0, 2], [1], [3], [4], [5]]
