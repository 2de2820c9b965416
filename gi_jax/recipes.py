"""Named fitting recipes: the settings that decide how well a fit does in a given time.

A :class:`Recipe` fixes the initialisation, the learning rate and its schedule, per-group
learning-rate factors, Adan's betas, densification and the clip's gradient. Two are named:

* :data:`PAPER`: the paper's protocol, exactly (random init, Adan at 1e-3 halved every 20,000
  steps; docs/design.md §4). It is the library's default, so ``fit(image, n, steps)`` reproduces
  the paper bit for bit.
* :data:`BEST`: the best we have measured at equal wall time: content-adaptive init, Adan at 0.03
  held for 80% of the run and then decayed by a cosine (``"hold_cosine"``), and per-group factors
  (positions ×0.5 per 256 pixels of the image's extent, slower by the Gaussians' spacing in fits
  denser than 10,000 at 768×512; covariances ×4, colours ×0.5), with Adan's betas (0.9, 0.99,
  0.99) instead of the reference's (0.98, 0.92, 0.99). The CLIs default to it.

:func:`gi_jax.fit`, :func:`gi_jax.fit_batch` and :func:`gi_jax.fit_dataset` take
``recipe="paper"|"best"|Recipe``; an argument passed explicitly (not None) overrides the recipe's
field of that name, one by one.

Example::

  result = gi_jax.fit(image, 10_000, 2_000, recipe="best")
  result = gi_jax.fit(image, 10_000, 2_000, recipe="best", learning_rate=0.01)   # one override
  mine = recipes.BEST.replace(lr_factors=None)                                   # a variant
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import optax

from gi_jax import errors, optim
from gi_jax.densify import DensifySchedule
from gi_jax.render import check_clip_gradient

INITS = ("random", "gradient")


@dataclasses.dataclass(frozen=True)
class LrFactors:
  """Per-group learning-rate factors (:func:`gi_jax.optim.scale_by_group`), each > 0.

  Positions are learned in units of the image's extent (``x = ½·W·(tanh u + 1)``), so one factor
  moves them three times as many pixels a step in a 768-pixel-wide image as in a 256-pixel one.
  With ``reference_size``, ``means`` is the factor at that extent, and each axis' factor is
  scaled by ``reference_size / extent`` (width for x, height for y): positions move as many
  pixels a step at any size. With ``reference_area``, fits denser than that many pixels per
  Gaussian move their positions slower, in proportion to the Gaussians' spacing (the factor times
  ``√(pixels per Gaussian / reference_area)``); sparser fits keep the factor.

  Attributes:
    means: factor of the positions' (``means_raw``) learning rate (at ``reference_size``).
    cov: factor of the covariances' (``cov_raw``) learning rate.
    colors: factor of the colours' learning rate.
    reference_size: the image extent in pixels at which ``means`` applies, or None: ``means`` at
      every size.
    reference_area: the pixels per Gaussian (``height·width / N``) down to which ``means``
      applies, or None: ``means`` at every density.
  """
  means: float = 1.0
  cov: float = 1.0
  colors: float = 1.0
  reference_size: float | None = None
  reference_area: float | None = None

  def __post_init__(self):
    for name in ("means", "cov", "colors"):
      object.__setattr__(self, name, optim.check_learning_rate(getattr(self, name),
                                                               f"LrFactors.{name}"))
    for name in ("reference_size", "reference_area"):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, optim.check_learning_rate(getattr(self, name),
                                                                 f"LrFactors.{name}"))

  def by_field(self, height: int, width: int, num_gaussians: int
               ) -> dict[str, float | tuple[float, float]]:
    """The factors by :class:`gi_jax.Gaussians` field name for a fit of ``num_gaussians`` to a
    ``height`` × ``width`` image (the positions' as (x, y) factors where they depend on the
    size)."""
    means = self.means
    if self.reference_area is not None:
      means *= min(1.0, math.sqrt(height * width / num_gaussians / self.reference_area))
    if self.reference_size is not None:
      means = (means * self.reference_size / width, means * self.reference_size / height)
    return dict(means_raw=means, cov_raw=self.cov, colors=self.colors)

  def values(self) -> list[float | None]:
    """The factors as numbers (``means, cov, colors``, then ``reference_size`` and
    ``reference_area`` where either is set, None for one that is not)."""
    references = [self.reference_size, self.reference_area]
    return [self.means, self.cov, self.colors] + (
        [] if references == [None, None] else references)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a fit is run, apart from N, the step count and the machinery (backend, binning).

  Attributes:
    name: what the recipe is called in records and output.
    init: ``"random"`` (the paper's) or ``"gradient"`` (:func:`gi_jax.init.gradient_init`).
    learning_rate: Adan's base learning rate.
    lr_schedule: a name for :func:`gi_jax.optim.make_schedule`.
    lr_factors: per-group factors on the learning rate, or None (one rate for every parameter).
    adan_betas: Adan's decay rates (b1, b2, b3) (:func:`gi_jax.optim.adan`); the reference's
      (:data:`gi_jax.optim.ADAN_BETAS`) by default.
    densify: a :class:`gi_jax.densify.DensifySchedule`, or None.
    clip_gradient: ``"exact"`` or ``"straight_through"`` (see :func:`gi_jax.render.clip_unit`).
  """
  name: str = "custom"
  init: str = "random"
  learning_rate: float = 1e-3
  lr_schedule: str = "paper"
  lr_factors: LrFactors | None = None
  adan_betas: tuple[float, float, float] = optim.ADAN_BETAS
  densify: DensifySchedule | None = None
  clip_gradient: str = "exact"

  def __post_init__(self):
    if self.init not in INITS:
      raise errors.InvalidInputError(f"Recipe.init must be one of {INITS}, got {self.init!r}")
    # A bad schedule name or learning rate fails here, not after a long fit.
    optim.make_schedule(self.lr_schedule, self.learning_rate, 1)
    if self.lr_factors is not None and not isinstance(self.lr_factors, LrFactors):
      raise errors.InvalidInputError(
          f"Recipe.lr_factors must be an LrFactors or None, got {self.lr_factors!r}")
    object.__setattr__(self, "adan_betas", optim.check_betas(self.adan_betas, "Recipe.adan_betas"))
    check_clip_gradient(self.clip_gradient)

  def replace(self, **changes) -> Recipe:
    """A copy with ``changes`` (checked like a new recipe)."""
    return dataclasses.replace(self, **changes)

  def optimizer(self, steps: int, height: int, width: int, num_gaussians: int
                ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adan on this recipe's schedule for a run of ``steps``, then the per-group factors for a
    fit of ``num_gaussians`` to a ``height`` × ``width`` image, and the schedule (for the
    history)."""
    optimizer, schedule = optim.scheduled_adan(self.learning_rate, self.lr_schedule, steps,
                                               self.adan_betas)
    if self.lr_factors is not None:
      optimizer = optax.chain(optimizer,
                              optim.scale_by_group(
                                  self.lr_factors.by_field(height, width, num_gaussians)))
    return optimizer, schedule

  def optimizer_key(self, height: int, width: int, num_gaussians: int) -> tuple:
    """What the update step of :meth:`optimizer` for a fit of ``num_gaussians`` to a ``height`` ×
    ``width`` image depends on: Adan's betas, the schedule's name and the factors there. Its
    rate and run length are numbers in the optimizer's state, so runs that differ only in those
    share one compiled step (:func:`gi_jax.fitting.device_call`)."""
    factors = self.lr_factors
    return ("adan", self.adan_betas, self.lr_schedule,
            None if factors is None else tuple(
                factors.by_field(height, width, num_gaussians).items()))

  def describe(self) -> str:
    """One line: the recipe's name and settings (Adan's betas only where they are not the
    reference's, so recipes on those describe themselves as before the betas were a setting)."""
    f = self.lr_factors
    factors = "none" if f is None else f"{f.means:g},{f.cov:g},{f.colors:g}" + (
        "" if f.reference_size is None else f" (positions' per {f.reference_size:g} px)") + (
        "" if f.reference_area is None else
        f" (positions' slower below {f.reference_area:g} px per Gaussian)")
    return (f"recipe={self.name} init={self.init} learning_rate={self.learning_rate:g} "
            f"lr_schedule={self.lr_schedule} lr_factors={factors} densify={self.densify} "
            f"clip_gradient={self.clip_gradient}" + (
                "" if self.adan_betas == optim.ADAN_BETAS else
                " adan_betas=" + ",".join(f"{b:g}" for b in self.adan_betas)))


# The paper's protocol (docs/design.md §4): every field is fit's default before recipes existed.
PAPER = Recipe(name="paper")
# Measured on 256×256 Kodak crops at N = 1,667 (10,000 at full size), reference backend, CPU:
# gradient init with cosine 0.03 gains 4.1 dB over PAPER at 2,000 steps on kodim05; the factors
# gain 0.5-0.9 dB more at 1,000 steps on each of kodim01, 05, 13, 21 and 23, less at 3,000
# (0.2-0.3 dB on kodim01 and 05); cov ×8 does no better than ×4. Holding the rate before the
# decay gains 0.1-0.3 dB more at 1,000 steps on those five (0.0-0.1 dB at 2,000) at the same
# cost per step. No gain, so left out: densifying, the straight-through clip gradient, rate 0.05.
# The positions' factor is per 256 pixels of extent, where it was measured: at 768×512 a fixed
# 0.5 moved positions three times as many pixels a step, and 0.5·256/extent gains 0.15-0.55 dB
# after 1,000 steps on six Kodak images at 10,000 Gaussians (0.14 dB on kodim05 at 3,000), 0.7-1.3
# dB on kodim05 and 23 at 70,000. Denser fits gain from slower positions still, in proportion to
# the Gaussians' spacing below that of 10,000 at 768×512 (kodim01, 05 and 23 at 70,000 Gaussians,
# 30,000 and 20,000, and four 256×256 crops at 70,000's density: up to 1.2 dB at 1,000 steps, all
# but one crop gaining; less at 3,000, one crop losing 0.6 dB); sparser fits, such as the codec's,
# lose from slower ones and do not gain from faster ones.
# Adan's betas: b1 0.9 and b2 0.99 (the reference's 0.98 and 0.92) gain 0.3-0.5 dB at 2,000 steps
# on the crops of kodim01, 05 and 23, about 0.2-0.3 dB at 6,000 (kodim01, 05) and on kodim05 at
# full size at 3,000; b3 0.999 loses, and b2 0.999 loses 0.5 dB on kodim23.
BEST = Recipe(name="best", init="gradient", learning_rate=3e-2, lr_schedule="hold_cosine",
              lr_factors=LrFactors(means=0.5, cov=4.0, colors=0.5, reference_size=256,
                                   reference_area=768 * 512 / 10_000),
              adan_betas=(0.9, 0.99, 0.99))
RECIPES: Mapping[str, Recipe] = {"paper": PAPER, "best": BEST}


def named(recipe: str | Recipe) -> Recipe:
  """The recipe ``recipe`` names (a :class:`Recipe` is returned as it is).

  Raises:
    InvalidInputError: an unknown name or something else.
  """
  if isinstance(recipe, Recipe):
    return recipe
  if isinstance(recipe, str) and recipe in RECIPES:
    return RECIPES[recipe]
  raise errors.InvalidInputError(
      f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)} or pass a gi_jax.recipes.Recipe")


# The arguments of fit, fit_batch and fit_dataset that override a recipe's field of that name.
OVERRIDES = ("init", "learning_rate", "lr_schedule", "densify", "clip_gradient")


def resolve(recipe: str | Recipe, *, learning_rate: float | None = None,
            lr_schedule: str | None = None, densify: DensifySchedule | None = None,
            clip_gradient: str | None = None, init: str | None = None) -> Recipe:
  """``recipe`` with each argument that is not None put in place of its field.

  ``init`` overrides only as a name; starting Gaussians are the caller's business (``fit`` takes
  them beside the recipe).

  Raises:
    InvalidInputError: an unknown recipe, or an override the recipe's checks refuse.
  """
  changes = dict(learning_rate=learning_rate, lr_schedule=lr_schedule, densify=densify,
                 clip_gradient=clip_gradient, init=init if isinstance(init, str) else None)
  changes = {k: v for k, v in changes.items() if v is not None}
  base = named(recipe)
  return base.replace(**changes) if changes else base
