"""Image → ``.gimg`` bytes in one call: fit, quantization-aware fine-tuning, entropy coding.

The paper's codec fits from random Gaussians for 50,000 steps, fine-tunes 50,000 more and stores
positions as float16. :data:`PAPER` holds those settings; :data:`OURS` (the default of
:func:`encode_image`, ``gi-encode`` and ``experiments/compress.py``) starts from content-adaptive
Gaussians (:func:`gi_jax.init.gradient_init`) with a 30× larger learning rate decayed over the run,
so far fewer steps reach the same fit; stores positions on a quarter-pixel grid, which bits-back
ordering makes cheap, and at low rates (:class:`WidePositions`) those of Gaussians at least 2 px
wide on a half-pixel grid; gives colours 2 × 16 codewords instead of 2 × 8, which costs a bit
per Gaussian and wins over 1 dB on smooth images, and stores them in fixed point (steps of
2**-10) rather than float16; weights the colour commitment loss 0.1 instead of 1; fine-tunes
with a 20× larger learning rate, held and then decayed over the last fifth; and after
fine-tuning refines the colour indices and codewords for the decoder's render
(:func:`~gi_jax.codec.refine_colors`) (docs/design.md §5 for the paper's protocol; the README for
measured rate–distortion, docs/codec_experiments.md for how these choices were measured).

Example::

  encoded = codec.encode_image(image, num_gaussians=5000, steps=5000, finetune_steps=2000)
  with open("photo.gimg", "wb") as f:
    f.write(encoded.data)
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, NamedTuple, Sequence

import jax

from gi_jax import errors, optim, recipes
from gi_jax.batch import fit_batch
from gi_jax.codec.format import check_format_limits, encode
from gi_jax.codec.qat import FinetuneResult, finetune, finetune_batch
from gi_jax.codec.quantize import QuantizerConfig, check_wide_sigma
from gi_jax.codec.rd import rd_score
from gi_jax.codec.refine import RefineResult, refine_colors
from gi_jax.codec.render import render_capacity
from gi_jax.densify import DensifySchedule
from gi_jax.fitting import FitResult, check_target_image, fit, psnr_from_mse
from gi_jax.gaussians import check_count


@dataclasses.dataclass(frozen=True)
class WidePositions:
  """Which encodes put their wide Gaussians on a position grid twice as coarse
  (:attr:`QuantizerConfig.wide_sigma`): those with at least ``min_pixels_per_gaussian`` pixels
  per Gaussian (H·W/N), where the bits it saves are worth more than the precision it takes.

  Attributes:
    sigma: a Gaussian whose smaller standard deviation is at least this many pixels is wide (a
      multiple of 1/8 up to :data:`~gi_jax.codec.quantize.MAX_WIDE_SIGMA`).
    min_pixels_per_gaussian: the fewest pixels per Gaussian at which an encode uses the rule;
      0: every encode does.
  """
  sigma: float = 2.0
  # Measured on Kodak images (docs/codec_experiments.md): at 492 pixels per Gaussian (N = 800 at
  # 768×512) 21 of 24 images gain, +0.06 dB at equal rate on average; at 131 (N = 3,000) 13 of 24,
  # +0.02 dB; at 79 (N = 5,000) 7 of 8 lose, -0.05 dB. The mean crosses zero between 100 (the first
  # eight images, where this was set) and 115 (all): a difference under 0.02 dB.
  min_pixels_per_gaussian: float = 100.0

  def __post_init__(self):
    check_wide_sigma(self.sigma, True, errors.InvalidInputError)
    if not self.sigma or not (math.isfinite(self.min_pixels_per_gaussian)
                              and self.min_pixels_per_gaussian >= 0):
      raise errors.InvalidInputError(
          "WidePositions needs sigma > 0 and a finite min_pixels_per_gaussian >= 0, got "
          f"{self.sigma!r}, {self.min_pixels_per_gaussian!r}")

  def applies(self, height: int, width: int, num_gaussians: int) -> bool:
    """Whether an encode of N Gaussians on an H×W image uses the rule."""
    return height * width >= self.min_pixels_per_gaussian * num_gaussians


def override_wide(wide: WidePositions | None, sigma: float | None = None,
                  min_pixels_per_gaussian: float | None = None) -> WidePositions | None:
  """``wide`` with the fields given (None: ``wide``'s own, or :class:`WidePositions`'s defaults
  where ``wide`` is None) replaced; ``sigma=0`` turns wide positions off (None), as the command
  lines' ``--wide_sigma 0`` does."""
  if sigma == 0:
    return None
  if sigma is None and min_pixels_per_gaussian is None:
    return wide
  start = wide or WidePositions()
  return WidePositions(
      start.sigma if sigma is None else sigma,
      start.min_pixels_per_gaussian if min_pixels_per_gaussian is None else
      min_pixels_per_gaussian)


@dataclasses.dataclass(frozen=True)
class CodecSettings:
  """How an image becomes a file (everything except the rate, which N sets).

  Attributes:
    init: fitting initialisation, ``"random"`` (the paper) or ``"gradient"``.
    densify: error-guided densification during the fit, or None (the paper).
    quantizers: quantizer settings (``position_step`` 0: float16 positions, the paper's).
    wide: which encodes put their wide Gaussians on a coarser grid (:class:`WidePositions`), or
      None: none do, unless ``quantizers.wide_sigma`` says every encode does.
    parameterization: ``"cholesky"`` (the paper's codec) or ``"rs"``.
    learning_rate: fitting base learning rate (Adan, with ``lr_schedule``).
    finetune_learning_rate: fine-tuning base learning rate (a fresh Adan).
    lr_schedule: the fit's schedule (:func:`gi_jax.optim.make_schedule`): ``"paper"`` (halved
      every 20,000 steps), ``"cosine"`` (to 1% over the run) or ``"hold_cosine"``.
    lr_factors: the fit's per-group learning-rate factors (:class:`gi_jax.recipes.LrFactors`;
      the best fitting recipe's, but the positions' at every size and density), or None: one rate
      for every parameter.
    finetune_lr_schedule: fine-tuning's schedule, likewise.
    bits_back: code the Gaussians' order with bits-back (saves about log2(N!) bits).
    steps: fitting steps where the caller gives none, on a GPU (:func:`default_steps`).
    finetune_steps: fine-tuning steps likewise.
    codebook_sizes: colour codewords per stage to choose from, per image: each is fine-tuned
      from the same fit and encoded, and the file with the best :meth:`rd_score` is kept. Empty
      (the default) keeps ``quantizers.codebook_size`` and fine-tunes once.
    rd_slope: the trade-off of that choice, in dB of PSNR per doubling of the file: a larger
      codebook is kept when it gains more than this per doubling of the bits it costs; also the
      rate term of ``refine``.
    refine: after fine-tuning, improve the colour indices and codewords for the decoder's render
      (:func:`~gi_jax.codec.refine_colors`; residual-VQ colours only).
  """
  # The fit is the best fitting recipe's (init, rate, schedule, per-group factors): in paired
  # encodes of six full-size Kodak images at N = 800 and 3,000 it gains 0.18-0.48 dB at equal
  # rate over one rate on a cosine, in every pair (docs/codec_experiments.md).
  init: str = recipes.BEST.init
  densify: DensifySchedule | None = None
  # A tenth of the paper's commitment weight: at 1 the commitment pull outweighs the render's
  # gradient and holds colours near their codewords; at 0 nothing keeps them from drifting away.
  # Codewords in steps of 2**-10 (under 1/2000 of full intensity) cost about 11 bits instead of
  # float16's 16: 55-60 bytes less header at 2 × 16 codewords.
  quantizers: QuantizerConfig = QuantizerConfig(position_step=0.25, codebook_size=16,
                                                commitment_weight=0.1, codeword_fraction_bits=10)
  wide: WidePositions | None = WidePositions()
  parameterization: str = "cholesky"
  learning_rate: float = recipes.BEST.learning_rate
  # Fine-tuning gains from a sustained rate, and a larger one pays (docs/codec_experiments.md: over
  # 1e-2 held, +0.13 dB at equal rate on the 96 Kodak pairs of 2,000 CPU steps, 93 of them gaining)
  # if it ends small: held throughout, 2e-2 lost 0.4 dB on kodim23 at N = 5,000.
  finetune_learning_rate: float = 2e-2
  lr_schedule: str = recipes.BEST.lr_schedule
  finetune_lr_schedule: str = "hold_cosine"
  bits_back: bool = True
  # Gradient init reaches in thousands of steps what random init needs 50,000 for; the GPU
  # defaults aim at the ≤ 20 s per Kodak image of issue #6 (15.3 s per image at N = 5,000 in a
  # batch of eight on an H200: results/gpu_h200_2026-12-04).
  steps: int = 10_000
  finetune_steps: int = 5_000
  codebook_sizes: tuple[int, ...] = ()
  # The slope of our Kodak rate–distortion curve (1.6–1.8 dB per doubling of bpp): a choice that
  # beats it moves the image's point above the curve its neighbours' rates lie on.
  rd_slope: float = 1.7
  refine: bool = True
  # The best recipe's factors, but the positions' at every size and density: per 256 px of
  # extent gained nothing in paired encodes (kodim05, 23; N = 800, 3,000) and lost 0.16 dB on
  # kodim23 at 3,000 (docs/codec_experiments.md); the codec's fits are sparser than those the
  # best recipe slows by density.
  lr_factors: recipes.LrFactors | None = dataclasses.replace(
      recipes.BEST.lr_factors, reference_size=None, reference_area=None)

  def __post_init__(self):
    if not (math.isfinite(self.rd_slope) and self.rd_slope >= 0):
      raise errors.InvalidInputError(
          f"CodecSettings.rd_slope must be a finite number >= 0, got {self.rd_slope}")
    # A bad init, schedule name, learning rate or factor fails here, not after a long fit.
    _ = self.fit_recipe
    optim.make_schedule(self.finetune_lr_schedule, self.finetune_learning_rate, 1)
    sizes = tuple(self.codebook_sizes)
    if sizes and self.quantizers.color_bits:
      raise errors.InvalidInputError(
          "CodecSettings.codebook_sizes chooses residual-VQ codebooks, but these quantizers code "
          f"colours uniformly (color_bits={self.quantizers.color_bits})")
    if len(set(sizes)) != len(sizes):
      raise errors.InvalidInputError(f"CodecSettings.codebook_sizes repeats a size: {sizes}")
    object.__setattr__(self, "codebook_sizes", sizes)  # a list would make the settings unhashable
    if self.wide is not None and self.quantizers.wide_sigma:
      raise errors.InvalidInputError(
          "CodecSettings: give wide positions either in quantizers.wide_sigma (every encode) or "
          "in wide (by pixels per Gaussian), not both")
    # Every quantizer setting an encode may use is built now, so that QuantizerConfig's checks
    # (each codebook size; a grid under wide positions) fail here, not after a long fit.
    wide_sigma = self.wide_positions.sigma if self.wide_positions else 0.0
    for size in sizes or (self.quantizers.codebook_size,):
      dataclasses.replace(self.quantizers, codebook_size=size, wide_sigma=wide_sigma)

  @property
  def fit_recipe(self) -> recipes.Recipe:
    """The fitting recipe of these settings (:mod:`gi_jax.recipes`)."""
    return recipes.Recipe(name="codec", init=self.init, learning_rate=self.learning_rate,
                          lr_schedule=self.lr_schedule, lr_factors=self.lr_factors,
                          densify=self.densify)

  @property
  def wide_positions(self) -> WidePositions | None:
    """Which encodes have wide positions: ``wide``, or ``quantizers.wide_sigma``'s rule on every
    encode (as ``WidePositions(wide_sigma, 0)``); None: none."""
    if self.wide is None and self.quantizers.wide_sigma:
      return WidePositions(self.quantizers.wide_sigma, 0.0)
    return self.wide

  def quantizers_for(self, height: int, width: int, num_gaussians: int) -> QuantizerConfig:
    """``quantizers``, with ``wide``'s rule where it applies to N Gaussians on an H×W image."""
    if self.wide is None or not self.wide.applies(height, width, num_gaussians):
      return self.quantizers
    return dataclasses.replace(self.quantizers, wide_sigma=self.wide.sigma)

  def candidate_quantizers(self, height: int, width: int, num_gaussians: int
                           ) -> tuple[QuantizerConfig, ...]:
    """The quantizer settings N Gaussians on an H×W image are fine-tuned with: one per entry of
    ``codebook_sizes``, or :meth:`quantizers_for` alone."""
    base = self.quantizers_for(height, width, num_gaussians)
    return tuple(dataclasses.replace(base, codebook_size=k)
                 for k in self.codebook_sizes) or (base,)

  def rd_score(self, psnr: float, num_bytes: int) -> float:
    """Higher is better: PSNR less ``rd_slope`` dB per doubling of the file's size."""
    return rd_score(psnr, num_bytes, self.rd_slope)

  def refined(self, tuned: FinetuneResult, image, quantizers: QuantizerConfig,
              backend: str = "auto", capacity: int = 0
              ) -> tuple[FinetuneResult, RefineResult | None]:
    """``tuned`` with its colours refined (``refine``), or as it is; and the refinement
    (``capacity`` as for :func:`~gi_jax.codec.refine_colors`)."""
    if not self.refine or quantizers.color_bits:
      return tuned, None
    result = refine_colors(tuned.quantized, image, fraction_bits=quantizers.codeword_fraction_bits,
                           rd_slope=self.rd_slope, backend=backend, capacity=capacity)
    return dataclasses.replace(tuned, quantized=result.quantized, mse=result.mse,
                               psnr=psnr_from_mse(result.mse)), result

  def fit(self, image, num_gaussians: int, steps: int, *, seed: int = 0, backend: str = "auto",
          progress: bool | Callable[[dict], None] = False) -> FitResult:
    """The float fit these settings start from (:func:`gi_jax.fit` with their fitting options)."""
    return fit(image, num_gaussians, steps, seed=seed, parameterization=self.parameterization,
               backend=backend, progress=progress, recipe=self.fit_recipe)

  def finetune(self, fitted: FitResult, image, steps: int, *, seed: int = 0,
               backend: str = "auto", progress: bool | Callable[[dict], None] = False,
               quantizers: QuantizerConfig | None = None) -> FinetuneResult:
    """Quantization-aware fine-tuning of ``fitted`` (:func:`~gi_jax.codec.finetune`) with
    ``quantizers`` (default: these settings' for its image and N, :meth:`quantizers_for`)."""
    if quantizers is None:
      quantizers = self.quantizers_for(fitted.height, fitted.width,
                                       fitted.gaussians.num_gaussians)
    return finetune(fitted, image, steps, config=quantizers, seed=seed,
                    learning_rate=self.finetune_learning_rate,
                    lr_schedule=self.finetune_lr_schedule, backend=backend, progress=progress)


# The GaussianImage paper's codec: random init, float16 positions, 2 × 8 colour codewords, the
# reference's learning rates and schedule, 50,000 + 50,000 steps.
PAPER = CodecSettings(init="random", quantizers=QuantizerConfig(), wide=None, learning_rate=1e-3,
                      finetune_learning_rate=1e-3, lr_schedule="paper", lr_factors=None,
                      steps=50_000, finetune_steps=50_000, refine=False)
OURS = CodecSettings()
# Quick settings where no GPU is present: (fitting, fine-tuning) steps. Fine-tuning is still gaining
# at 500 steps: 2,000 took Kodak from -26.8% to -40.5% BD-rate against the paper's points, and
# -43.0% with OURS's fine-tuning rate (README, "Kodak, measured on the CPU").
CPU_STEPS = (1_000, 2_000)


def default_steps(settings: CodecSettings, steps: int | None = None,
                  finetune_steps: int | None = None) -> tuple[int, int, bool]:
  """Fills unset step counts: the settings' own on a GPU, :data:`CPU_STEPS` elsewhere.

  Returns:
    ``(steps, finetune_steps, quick)``; ``quick`` says that a CPU default was used.
  """
  on_gpu = jax.default_backend() == "gpu"
  defaults = (settings.steps, settings.finetune_steps) if on_gpu else CPU_STEPS
  quick = not on_gpu and (steps is None or finetune_steps is None)
  return (defaults[0] if steps is None else steps,
          defaults[1] if finetune_steps is None else finetune_steps, quick)


class Candidate(NamedTuple):
  """One fine-tuning an encode chose from (:attr:`CodecSettings.codebook_sizes`)."""
  codebook_size: int
  num_bytes: int
  psnr: float


@dataclasses.dataclass(frozen=True)
class EncodedImage:
  """The outcome of :func:`encode_image`.

  Attributes:
    data: the file's bytes.
    fitted: the float fit.
    tuned: the fine-tuned quantized set, refined where the settings say so (``tuned.psnr`` is
      the decoder's PSNR against the image).
    quantizers: the quantizer settings ``tuned`` was fine-tuned with (the kept candidate's).
    encode_seconds: wall time of the whole encode (fit, fine-tuning, refinement, entropy coding;
      compiling included).
    entropy_seconds: of which entropy coding (of every candidate).
    candidates: every fine-tuning the file was chosen from, in the settings' order (one unless
      ``codebook_sizes`` lists several).
    refinement: what :func:`~gi_jax.codec.refine_colors` did to the kept candidate (None when the
      settings do not refine).
  """
  data: bytes
  fitted: FitResult
  tuned: FinetuneResult
  quantizers: QuantizerConfig
  encode_seconds: float
  entropy_seconds: float
  candidates: tuple[Candidate, ...] = ()
  refinement: RefineResult | None = None

  @property
  def bpp(self) -> float:
    return 8.0 * len(self.data) / (self.tuned.height * self.tuned.width)


def _encode_best(settings: CodecSettings, fitted: FitResult, tunings: Sequence[FinetuneResult],
                 configs: Sequence[QuantizerConfig], target, backend: str, seconds: float,
                 capacity: int = 0) -> EncodedImage:
  """Refines and encodes each candidate fine-tuning of one image (made with ``configs``) and
  keeps the file with the best rd_score; ``seconds`` is the encode's time before refinement,
  ``capacity`` the refinement's."""
  t0 = time.perf_counter()
  tunings, refinements = zip(*(settings.refined(t, target, q, backend, capacity)
                               for t, q in zip(tunings, configs)))
  seconds += time.perf_counter() - t0
  t0 = time.perf_counter()
  files = [encode(t.quantized, t.height, t.width, bits_back=settings.bits_back) for t in tunings]
  entropy = time.perf_counter() - t0
  candidates = tuple(Candidate(q.codebook_size, len(data), t.psnr)
                     for q, t, data in zip(configs, tunings, files))
  best = max(range(len(candidates)),
             key=lambda i: settings.rd_score(candidates[i].psnr, candidates[i].num_bytes))
  return EncodedImage(files[best], fitted, tunings[best], configs[best],
                      encode_seconds=seconds + entropy, entropy_seconds=entropy,
                      candidates=candidates, refinement=refinements[best])


def _check_request(settings: CodecSettings, height: int, width: int, num_gaussians) -> None:
  """Fails before fitting where the file could not be written: an impossible position grid, or
  more Gaussians than the format holds."""
  check_format_limits(height, width, check_count(num_gaussians))
  settings.quantizers.position_cells(height, width)


def encode_image(image, num_gaussians: int, steps: int, finetune_steps: int, *,
                 settings: CodecSettings = OURS, seed: int = 0, backend: str = "auto",
                 progress: bool | Callable[[dict], None] = False) -> EncodedImage:
  """Compresses an image into a ``.gimg`` file.

  Args:
    image: [H, W, 3] float image in [0, 1].
    num_gaussians: N (the rate control).
    steps: fitting steps (the paper: 50,000).
    finetune_steps: quantization-aware fine-tuning steps (the paper: 50,000), per candidate of
      ``settings.codebook_sizes``.
    settings: :data:`OURS` (default) or :data:`PAPER`, or any :class:`CodecSettings`.
    seed: initialisation and k-means seed.
    backend: rendering backend.
    progress: as for :func:`gi_jax.fit`.

  Returns:
    An :class:`EncodedImage`; ``decode(result.data)`` renders ``result.tuned``'s image bit for bit.
  """
  target = check_target_image(image)
  height, width = target.shape[:2]
  _check_request(settings, height, width, num_gaussians)
  configs = settings.candidate_quantizers(height, width, num_gaussians)
  t0 = time.perf_counter()
  fitted = settings.fit(target, num_gaussians, steps, seed=seed, backend=backend,
                        progress=progress)
  tunings = [settings.finetune(fitted, target, finetune_steps, seed=seed, backend=backend,
                               progress=progress, quantizers=quantizers)
             for quantizers in configs]
  return _encode_best(settings, fitted, tunings, configs, target, backend,
                      time.perf_counter() - t0)


def encode_images(images, num_gaussians: int, steps: int, finetune_steps: int, *,
                  settings: CodecSettings = OURS, seeds: Sequence[int] | None = None,
                  backend: str = "auto", progress: bool | Callable[[dict], None] = False
                  ) -> list[EncodedImage]:
  """:func:`encode_image` of B same-size images at once (:func:`gi_jax.fit_batch`, then
  :func:`~gi_jax.codec.finetune_batch` per candidate): on a GPU the batch shares every device
  call.

  Args:
    images: B images [H, W, 3] in [0, 1], all the same size.
    seeds: seed of each image (default ``range(B)``); image i matches
      ``encode_image(images[i], ..., seed=seeds[i])`` up to float rounding.
    num_gaussians, steps, finetune_steps, settings, backend, progress: as for
      :func:`encode_image`.

  Returns:
    B :class:`EncodedImage` in input order; ``encode_seconds`` is the batch's wall time divided by
    B (the cost per image), ``entropy_seconds`` each file's own.
  """
  targets = [check_target_image(image) for image in images]
  seeds = list(range(len(targets))) if seeds is None else list(seeds)
  if not targets:
    raise errors.InvalidInputError("encode_images needs at least one image")
  _check_request(settings, *targets[0].shape[:2], num_gaussians)
  configs = settings.candidate_quantizers(*targets[0].shape[:2], num_gaussians)
  t0 = time.perf_counter()
  fits = fit_batch(targets, num_gaussians, steps, seeds=seeds,
                   parameterization=settings.parameterization, backend=backend,
                   progress=progress, recipe=settings.fit_recipe)
  per_candidate = [finetune_batch(fits, targets, finetune_steps, config=quantizers, seeds=seeds,
                                  learning_rate=settings.finetune_learning_rate,
                                  lr_schedule=settings.finetune_lr_schedule, backend=backend,
                                  progress=progress)
                   for quantizers in configs]
  # The images' refinements share compiled renders (one capacity), as fine-tuning's did.
  capacity = render_capacity([t.quantized for tunings in per_candidate for t in tunings],
                             *targets[0].shape[:2])
  shared = (time.perf_counter() - t0) / len(targets)
  return [_encode_best(settings, fitted, tunings, configs, target, backend, shared, capacity)
          for fitted, tunings, target in zip(fits, zip(*per_candidate), targets)]
