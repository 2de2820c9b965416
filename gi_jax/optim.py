"""The Adan optimizer and learning-rate schedule of the GaussianImage paper protocol.

GaussianImage fits with the Adan optimizer of the reference code (the sail-sg PyTorch Adan, with
betas (0.98, 0.92, 0.99), eps 1e-8, no weight decay) and a ``StepLR`` schedule that halves the
learning rate every 20,000 steps. ``optax.adan`` (optax 0.2.8) weights the gradient-difference term
differently and would not reproduce the paper's fits, so :func:`adan` transcribes the reference
update (docs/design.md §4) as an optax ``GradientTransformation``.

Example::

  import optax
  from gi_jax import optim

  opt = optim.adan(optim.paper_schedule())
  state = opt.init(params)
  updates, state = opt.update(grads, state, params)
  params = optax.apply_updates(params, updates)
"""

import dataclasses
import math
from typing import Callable, Mapping, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gi_jax.errors import InvalidInputError

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]

# The reference's Adan betas (b1, b2, b3): the paper's fits use them (docs/design.md §4).
ADAN_BETAS = (0.98, 0.92, 0.99)


class AdanState(NamedTuple):
  """State of :func:`adan`; every field but ``count`` is a pytree shaped like the parameters.

  Attributes:
    count: int32 scalar, the number of updates applied so far (0-based count of the next update).
    mu: EMA of the gradient (the reference's ``exp_avg``, m).
    nu_diff: EMA of the gradient difference g_k - g_{k-1} (``exp_avg_diff``, v).
    n: EMA of the squared corrected gradient (g + β2·diff)² (``exp_avg_sq``, n).
    prev_grad: the gradient of the previous update (zeros before the first update).
    schedule: the numbers of a :class:`Schedule` learning rate (empty otherwise).
  """
  count: jax.Array
  mu: optax.Updates
  nu_diff: optax.Updates
  n: optax.Updates
  prev_grad: optax.Updates
  schedule: tuple = ()


def adan(learning_rate: ScalarOrSchedule = 1e-3,
         b1: float = ADAN_BETAS[0],
         b2: float = ADAN_BETAS[1],
         b3: float = ADAN_BETAS[2],
         eps: float = 1e-8) -> optax.GradientTransformation:
  """The reference-faithful Adan update (docs/design.md §4) as an optax transformation.

  At update k (1-based), with gradient g and diff = g - g_prev (diff = 0 at k = 1)::

    m = b1·m + (1-b1)·g
    v = b2·v + (1-b2)·diff
    n = b3·n + (1-b3)·(g + b2·diff)²
    denom = sqrt(n) / sqrt(1 - b3^k) + eps
    update = -(lr·m / ((1-b1^k)·denom) + lr·b2·v / ((1-b2^k)·denom))

  The update is the negative step, so ``optax.apply_updates(params, updates)`` performs the descent.
  There is no weight decay and no gradient clipping (the paper uses neither). The state is a pytree,
  so the transformation works under ``jit``, ``vmap`` and ``lax.scan``.

  Example::

    opt = adan(1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state)
    params = optax.apply_updates(params, updates)

  Args:
    learning_rate: a float, an optax schedule called with the 0-based update count (as
      :func:`paper_schedule` returns), or a :class:`Schedule`, whose numbers are kept in the state
      so that one compiled step serves every rate and run length.
    b1: decay rate of the gradient EMA (the reference's beta1).
    b2: decay rate of the gradient-difference EMA (beta2).
    b3: decay rate of the squared-gradient EMA (beta3).
    eps: added to the bias-corrected root of n, as in the reference (outside the square root).

  Returns:
    An ``optax.GradientTransformation`` whose state is an :class:`AdanState`.
  """

  def init_fn(params: optax.Params) -> AdanState:
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    numbers = learning_rate.numbers() if isinstance(learning_rate, Schedule) else ()
    return AdanState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu_diff=zeros(), n=zeros(),
                     prev_grad=zeros(), schedule=numbers)

  def update_fn(updates: optax.Updates, state: AdanState, params=None):
    del params  # No weight decay, so the update does not depend on the parameters.
    count = state.count
    if isinstance(learning_rate, Schedule):
      lr = learning_rate.value(count, state.schedule)
    else:
      lr = learning_rate(count) if callable(learning_rate) else learning_rate
    # k is the 1-based step of the reference; kept in the default float type so that a float64 run
    # (x64 enabled) gets float64 bias corrections, then cast to each leaf's dtype below.
    k = (count + 1).astype(jnp.result_type(float))
    bc1 = 1 - b1**k
    bc2 = 1 - b2**k
    bc3_sqrt = jnp.sqrt(1 - b3**k)
    first = count == 0

    def leaf(g, m, v, n, prev):
      dt = g.dtype
      # The reference sets pre_grad = g on its first step, so the first diff is exactly zero.
      diff = jnp.where(first, jnp.zeros_like(g), g - prev)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * diff
      corrected = g + b2 * diff
      n = b3 * n + (1 - b3) * corrected * corrected
      denom = jnp.sqrt(n) / bc3_sqrt.astype(dt) + eps
      # lr/bc1 and lr·b2/bc2 as one [2] array, which XLA:GPU computes in one kernel, not two.
      scales = (jnp.asarray(lr, dt) * jnp.stack([1.0, b2]).astype(dt)
                / jnp.stack([bc1, bc2]).astype(dt))
      step = scales[0] * m / denom
      step_diff = scales[1] * v / denom
      return -(step + step_diff), m, v, n

    grads, treedef = jax.tree.flatten(updates)
    inputs = [grads] + [treedef.flatten_up_to(tree) for tree in
                        (state.mu, state.nu_diff, state.n, state.prev_grad)]
    outputs = [[None] * len(grads) for _ in range(4)]
    for group in side_by_side_groups(grads):
      joined = [_join([leaves[i] for i in group]) for leaves in inputs]
      for out, result in zip(outputs, leaf(*joined)):
        for i, part in zip(group, _split(result, [grads[i] for i in group])):
          out[i] = part
    new_updates, mu, nu_diff, n = (jax.tree.unflatten(treedef, out) for out in outputs)
    new_state = AdanState(count=optax.safe_increment(count), mu=mu, nu_diff=nu_diff, n=n,
                          prev_grad=updates, schedule=state.schedule)
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def side_by_side_groups(leaves) -> list[list[int]]:
  """Indices of ``leaves`` grouped by shape but the last axis and dtype, in order of first leaf.

  An elementwise update of a group's leaves laid side by side along their last axis ([..., N, 2]
  and [..., N, 3] as one [..., N, 5]) is one set of operations instead of one per leaf: the
  same arithmetic, with fewer ops for XLA to lower and fuse. Scalars stand alone.
  """
  groups = {}
  for i, x in enumerate(leaves):
    key = (x.shape[:-1], x.dtype) if jnp.ndim(x) >= 1 else ("alone", i)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _join(parts):
  """Arrays that differ only in their last axis, side by side along it."""
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _split(joined, like):
  """The inverse of :func:`_join`: ``joined`` cut into arrays shaped like ``like``'s."""
  if len(like) == 1:
    return [joined]
  offsets = np.cumsum([0] + [x.shape[-1] for x in like])
  return [joined[..., lo:hi] for lo, hi in zip(offsets, offsets[1:])]


# The paper's StepLR: the rate times PAPER_GAMMA every PAPER_STEP_SIZE updates.
PAPER_STEP_SIZE = 20000
PAPER_GAMMA = 0.5


def paper_schedule(learning_rate: float = 1e-3,
                   step_size: int = PAPER_STEP_SIZE,
                   gamma: float = PAPER_GAMMA) -> optax.Schedule:
  """The paper's step schedule: the learning rate times ``gamma`` every ``step_size`` steps.

  It mirrors torch's ``StepLR(step_size, gamma)`` stepped once after every optimizer step: update
  ``c`` (0-based, as optax counts) uses ``learning_rate * gamma**floor(c / step_size)``, so updates
  0..19999 use 1e-3 and update 20000 is the first at 5e-4.

  Example::

    opt = adan(paper_schedule())          # lr 1e-3, halved every 20,000 steps
    lr_at = paper_schedule()(40000)       # 2.5e-4

  Args:
    learning_rate: the initial learning rate.
    step_size: number of updates between decays (>= 1).
    gamma: multiplicative decay factor.

  Returns:
    An optax schedule: a function of the update count returning the learning rate.
  """
  if int(step_size) < 1:
    raise InvalidInputError(f"paper_schedule needs step_size >= 1, got {step_size}")

  return lambda count: _step_decay(jnp.asarray(count), learning_rate, step_size, gamma)


def _step_decay(count, learning_rate, step_size: int, gamma: float):
  """``learning_rate · gamma^floor(count / step_size)``: torch's ``StepLR``."""
  return learning_rate * gamma**(count // step_size).astype(jnp.result_type(float))


SCHEDULES = ("paper", "cosine", "hold_cosine")
# Fraction of a "hold_cosine" run spent decaying (the rest holds the base rate).
HOLD_COSINE_DECAY_FRACTION = 0.2


def check_learning_rate(learning_rate, name: str = "learning_rate") -> float:
  """Raises InvalidInputError unless ``learning_rate`` is a finite real number > 0."""
  if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating))
      or not math.isfinite(learning_rate) or learning_rate <= 0):
    raise InvalidInputError(f"{name} must be a finite number > 0, got {learning_rate!r}")
  return float(learning_rate)


def make_schedule(name: str, learning_rate: float, steps: int) -> "Schedule":
  """A learning-rate schedule by name, for a run of ``steps`` updates.

  ``"paper"`` is :func:`paper_schedule` (the rate halved every 20,000 steps: nearly constant in a
  short run); ``"cosine"`` decays from ``learning_rate`` to 1% of it over the run, which lets a
  short run start with large steps and still end with small ones; ``"hold_cosine"`` holds
  ``learning_rate`` for the first 80% of the run and decays it by a cosine to 1% over the last
  20%, for runs that gain from a sustained rate but should still end with small steps.

  Returns:
    A :class:`Schedule` (an optax schedule when called with the update count).

  Raises:
    InvalidInputError: an unknown name, or ``learning_rate`` not a finite number > 0 (NaN would
      turn every parameter into NaN without a word).
  """
  check_learning_rate(learning_rate)
  if name not in SCHEDULES:
    raise InvalidInputError(f"unknown learning-rate schedule {name!r}; choose from {SCHEDULES}")
  return Schedule(name, float(learning_rate), max(int(steps), 1))


# The floor of "cosine" and "hold_cosine", as a fraction of the base rate.
COSINE_FLOOR = 0.01


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A named schedule (:func:`make_schedule`) whose numbers are values, not constants.

  Called with an update count it is an optax schedule. Given to :func:`adan`, its numbers (the
  rate, the decay's length and the hold) live in the optimizer's state, so a compiled step does not
  depend on them: fits that differ only in their rate or step count share one program. Each value
  is the same, bit for bit, as optax's schedule of the same name computes under ``jit``. Adan's
  steps are too for "paper" and "hold_cosine"; on "cosine" they may differ in the last bit from
  a step compiled with the numbers as constants, where XLA folds the rate into Adan's β2.

  Attributes:
    name: one of :data:`SCHEDULES`.
    learning_rate: the base rate.
    steps: the run's length in updates.
  """
  name: str
  learning_rate: float
  steps: int

  def numbers(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(learning_rate, decay_steps, hold)``: what :meth:`value` reads, as arrays."""
    decay, hold = self.steps, 0
    if self.name == "hold_cosine":
      decay = max(round(self.steps * HOLD_COSINE_DECAY_FRACTION), 1)
      hold = self.steps - decay
    real = jnp.result_type(float)
    return (jnp.asarray(self.learning_rate, real), jnp.asarray(decay, real),
            jnp.asarray(hold, jnp.int32))

  def value(self, count: jax.Array, numbers) -> jax.Array:
    """The rate of update ``count`` (0-based) from :meth:`numbers` (or traced copies of them)."""
    learning_rate, decay, hold = numbers
    if self.name == "paper":
      return _step_decay(count, learning_rate, PAPER_STEP_SIZE, PAPER_GAMMA)
    if self.name == "cosine":
      return _cosine(count, learning_rate, decay)
    return jnp.where(count < hold, learning_rate, _cosine(count - hold, learning_rate, decay))

  def __call__(self, count) -> jax.Array:
    return self.value(jnp.asarray(count), self.numbers())


def _cosine(count, learning_rate, decay):
  """optax's ``cosine_decay_schedule(learning_rate, decay, alpha=COSINE_FLOOR)`` in the form XLA
  compiles it to when the length is a constant (the constants multiplied together), so the value
  does not depend on whether the length is known when compiling."""
  count = jnp.minimum(count, decay)
  angle = count * (jnp.pi * (1 / decay))
  return learning_rate * ((jnp.cos(angle) + 1) * (0.5 * (1 - COSINE_FLOOR)) + COSINE_FLOOR)


def scheduled_adan(learning_rate: float, lr_schedule: str, steps: int,
                   betas: Sequence[float] = ADAN_BETAS
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adan with ``betas`` (b1, b2, b3) on a named schedule (:func:`make_schedule`) for a run of
  ``steps``, and the schedule."""
  schedule = make_schedule(lr_schedule, learning_rate, steps)
  return adan(schedule, *check_betas(betas)), schedule


def check_betas(betas, name: str = "betas") -> tuple[float, float, float]:
  """``betas`` as Adan's three decay rates (b1, b2, b3), each a number in [0, 1).

  Raises:
    InvalidInputError: not three numbers, or one outside [0, 1) (1 would freeze an average at
      zero and divide by zero in its bias correction).
  """
  try:
    values = tuple(float(b) for b in betas)
  except (TypeError, ValueError):
    values = ()
  if len(values) != 3 or not all(0.0 <= b < 1.0 for b in values):
    raise InvalidInputError(f"{name} must be three numbers in [0, 1) (Adan's b1, b2, b3), "
                            f"got {betas!r}")
  return values


def scale_by_group(factors: Mapping[str, float | Sequence[float]]
                   ) -> optax.GradientTransformation:
  """Scales the update of each named parameter group by its factor (others pass unchanged).

  A group is a field name of the parameter pytree (for :class:`gi_jax.Gaussians`: ``means_raw``,
  ``cov_raw``, ``colors``), matched at any depth, so Gaussians inside another pytree (an
  α-blended fit's) are scaled alike. Chained after :func:`adan`, whose update is linear in the
  learning rate, it gives each group its own learning rate on one shared schedule. A factor may
  be a sequence, one factor per entry of the group's last axis (positions' x and y).

  Example::

    opt = optax.chain(adan(make_schedule("cosine", 0.03, steps)),
                      scale_by_group(dict(means_raw=(0.17, 0.25), cov_raw=4.0, colors=0.5)))

  Args:
    factors: field name -> finite factor > 0, or a sequence of them.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Raises:
    InvalidInputError: a factor that is not a finite number > 0.
  """
  def checked(name, f):
    if isinstance(f, (tuple, list)):
      return tuple(check_learning_rate(x, f"the factor of {name!r}") for x in f)
    return check_learning_rate(f, f"the factor of {name!r}")
  factors = {name: checked(name, f) for name, f in dict(factors).items()}

  def factor_of(path):
    for entry in reversed(path):
      name = getattr(entry, "name", None)
      if name is not None:
        return factors.get(name, 1.0)
    return 1.0

  def update_fn(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u if factor_of(path) == 1.0 else u * jnp.asarray(factor_of(path), u.dtype),
        updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
