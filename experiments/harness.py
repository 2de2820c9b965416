"""The experiment harness, what the CLIs in ``experiments/`` share: settings, list flags, image
discovery, the results file and the keys its records are found by (a fit's, codec settings'),
and the fit record.

Also the dataset path (:func:`fit_dataset_and_record`: batched, resumable, one record per image as
its batch finishes), the summary in the columns of the paper's Table 1 with its figure,
:func:`write_json` for a run's JSON outputs, and :func:`pyplot` for every figure (matplotlib is the
``plots`` extra, imported only to draw).

It lives beside the CLIs rather than in ``gi_jax``, which never imports it: ``python
experiments/fit.py`` puts this folder on ``sys.path``, so the CLIs ``import harness``; the tests
find it through pytest's ``pythonpath`` (pyproject.toml).
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import sys
import time
import zlib
from typing import TYPE_CHECKING, Callable, NamedTuple

import jax
import numpy as np
from absl import flags

import gi_jax
from gi_jax import errors, io, metrics, optim, recipes
from gi_jax.memory import peak_bytes_in_use
from gi_jax.dataset import fit_dataset
from gi_jax.fitting import BinReuse, FitResult, fit
from gi_jax.render import render
from gi_jax.sharding import default_mesh
from gi_jax.storage import atomic_path, check_writable, save_gaussians
from gi_jax.timing import median_seconds
# The CLIs draw through the harness.
from figures import fit_figure, pyplot, save_figure  # noqa: F401

if TYPE_CHECKING:
  from gi_jax.codec import CodecSettings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class RunSettings(NamedTuple):
  """What a fitting experiment runs with (see :func:`paper_or_cpu_settings`)."""
  counts: list[int]
  steps: int
  init: str
  learning_rate: float
  lr_schedule: str
  label: str = ""


# The paper's protocol on a GPU; on a CPU, few steps, so Gaussians start where the image needs
# them (random starts need tens of thousands of steps) and take large, decaying steps.
PAPER_SETTINGS = RunSettings([70_000], 50_000, "random", 1e-3, "paper")
CPU_SETTINGS = RunSettings([10_000], 1_000, "gradient", 3e-2, "cosine")


def run_failed(error: errors.GIError) -> SystemExit:
  """What a CLI raises when its run stops on one of our errors: the message alone on stderr and
  exit status 1 (absl's UsageError would bury it under the whole flags' help).

  Example, in a CLI's ``main``::

    try:
      ...  # the run
    except errors.GIError as e:
      raise run_failed(e) from None
  """
  return SystemExit(f"{os.path.basename(sys.argv[0])}: error: {error}")


def paper_or_cpu_settings(counts: list[int] | None, steps: int | None, init: str | None = None,
                          learning_rate: float | None = None,
                          lr_schedule: str | None = None,
                          recipe: recipes.Recipe | None = None) -> RunSettings:
  """Fills unset settings: the paper's on a GPU, quick ones on a CPU.

  Args:
    recipe: where unset ``init``, ``learning_rate`` and ``lr_schedule`` come from (None: the
      paper's on a GPU, the quick CPU ones elsewhere); counts and steps still follow the device.

  Returns:
    :class:`RunSettings`; ``label`` says which settings run.
  """
  on_gpu = jax.default_backend() == "gpu"
  defaults = PAPER_SETTINGS if on_gpu else CPU_SETTINGS
  if recipe is not None:
    defaults = defaults._replace(init=recipe.init, learning_rate=recipe.learning_rate,
                                 lr_schedule=recipe.lr_schedule)
  where = "GPU: paper settings" if on_gpu else (
      "CPU: quick settings (the paper's are --num_gaussians=70000 --steps=50000 --init=random "
      "--learning_rate=0.001 --lr_schedule=paper)")
  if recipe is not None:
    where = (f"{'GPU' if on_gpu else 'CPU'}: recipe {recipe.name} (the paper's protocol is "
             "--recipe=paper --num_gaussians=70000 --steps=50000)")
  counts = counts or defaults.counts
  steps = defaults.steps if steps is None else steps
  init = init or defaults.init
  learning_rate = defaults.learning_rate if learning_rate is None else learning_rate
  lr_schedule = lr_schedule or defaults.lr_schedule
  for n in counts:
    if n < 1:
      raise errors.InvalidInputError(f"--num_gaussians must be >= 1, got {n}")
  if steps < 0:
    raise errors.InvalidInputError(f"--steps must be >= 0, got {steps}")
  if not learning_rate > 0:
    raise errors.InvalidInputError(f"--learning_rate must be > 0, got {learning_rate}")
  return RunSettings(counts, steps, init, learning_rate, lr_schedule,
                     f"{where}; num_gaussians={counts} steps={steps} init={init} "
                     f"learning_rate={learning_rate:g} lr_schedule={lr_schedule}")


# Kodak's size: experiments on crops scale Gaussian counts to keep this density of Gaussians.
REFERENCE_PIXELS = 768 * 512


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The centred ``size``×``size`` crop (the whole image when ``size`` is 0 or too large)."""
  height, width = image.shape[:2]
  if size <= 0 or (size >= height and size >= width):
    return image
  h, w = min(size, height), min(size, width)
  top, left = (height - h) // 2, (width - w) // 2
  return image[top:top + h, left:left + w]


def scaled_count(nominal: int, height: int, width: int, by_area: bool) -> int:
  """``nominal`` Gaussians for a Kodak-size image, scaled to this size's area if ``by_area``."""
  return max(1, round(nominal * height * width / REFERENCE_PIXELS)) if by_area else nominal


def find_images(folder: str) -> list[str]:
  """Image files (PNG, JPEG) directly in ``folder``, sorted by name."""
  if not os.path.isdir(folder):
    raise errors.ImageFileError(f"{folder}: no such folder")
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(IMAGE_SUFFIXES))
  if not paths:
    raise errors.ImageFileError(f"{folder}: no PNG or JPEG images in it")
  return paths


def select_images(dataset: str | None, names: list[str] | None = None,
                  max_images: int | None = None) -> list[str]:
  """The images a CLI runs on: ``dataset``'s (the bundled sample without one), only ``names`` if
  given, at most the first ``max_images``.

  Raises:
    errors.ImageFileError: no such folder, no images in it, or a name not in it.
  """
  paths = find_images(dataset) if dataset else [io.sample_image_path()]
  if names:
    missing = set(names) - {os.path.basename(p) for p in paths}
    if missing:
      raise errors.ImageFileError(f"not in {dataset or 'the bundled sample'}: {sorted(missing)}")
    paths = [p for p in paths if os.path.basename(p) in names]
  if max_images is None:
    return paths
  if max_images < 1:
    raise errors.InvalidInputError(f"--max_images must be >= 1, got {max_images}")
  return paths[:max_images]


def numbers(values: list[str], flag: str, kind: type, valid: Callable[[float], bool],
            what: str) -> list:
  """A list flag as numbers of ``kind`` (int or float), each finite and passing ``valid``.

  Raises:
    errors.InvalidInputError: an empty list, or a value that does not parse or pass; the message
      names ``--flag`` and ``what`` it takes.
  """
  try:
    parsed = [kind(v) for v in values]
  except ValueError:
    parsed = []
  if not parsed or not all(math.isfinite(x) and valid(x) for x in parsed):
    raise errors.InvalidInputError(f"--{flag} must be {what}, got {values}")
  return parsed


def positive_integers(values: list[str], flag: str = "num_gaussians") -> list[int]:
  """A list flag (``--num_gaussians`` by default) as integers >= 1 (see :func:`numbers`)."""
  return numbers(values, flag, int, lambda n: n >= 1, "positive integers")


# Field kinds a records file's check names (see ResultsFile): JSON numbers, strings, and the like.
NUMBER = "a number"
OPTIONAL_NUMBER = "a number or null"
INTEGER = "an integer"
STRING = "a string"
OBJECT = "an object"
LIST = "a list"
FILE_NAME = "a file name"


def _is_kind(value, kind: str) -> bool:
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  return {NUMBER: number, OPTIONAL_NUMBER: value is None or number,
          INTEGER: isinstance(value, int) and not isinstance(value, bool),
          STRING: isinstance(value, str), OBJECT: isinstance(value, dict),
          LIST: isinstance(value, list),
          FILE_NAME: isinstance(value, str) and is_file_name(value)}[kind]


def is_file_name(name: str) -> bool:
  """Whether ``name`` is a bare file name (what records hold): no folder part, not ``.``/``..``."""
  return (bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name
          and (os.altsep is None or os.altsep not in name) and "\0" not in name)


def file_in(folder: str, name) -> str:
  """The path of the file ``name`` in ``folder``, where ``name`` was read from a records file.

  Args:
    folder: the folder the records' files live in.
    name: the file name the record holds.

  Returns:
    ``folder/name``.

  Raises:
    errors.InvalidInputError: ``name`` is not a bare file name, or the path resolves (through a
      link) outside ``folder``: a damaged or crafted record must not make a run read or write
      anywhere else.
  """
  if not (isinstance(name, str) and is_file_name(name)):
    raise errors.InvalidInputError(f"{folder}: a record names the file {name!r}, which is not a "
                                   "file name in that folder; refusing to follow it")
  path = os.path.join(folder, name)
  real_folder = os.path.realpath(folder)
  if os.path.commonpath([real_folder, os.path.realpath(path)]) != real_folder:
    raise errors.InvalidInputError(f"{path}: resolves outside {folder}; refusing to follow it")
  return path


FieldKinds = dict[str, str]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
  """8 hex digits of the ``gi_jax`` package's source. Every record carries it (``code``), so a
  run that skips records made by other code, which may give other results, can say so."""
  root = os.path.dirname(os.path.abspath(gi_jax.__file__))
  digest = 0
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      digest = zlib.crc32(os.path.relpath(path, root).encode(), digest)
      with open(path, "rb") as f:
        digest = zlib.crc32(f.read(), digest)
  return f"{digest:08x}"


def other_code_note(records: list[dict]) -> str:
  """What a "done already" message adds where some of ``records`` were made by other code."""
  other = sum(record.get("code") != code_digest() for record in records)
  if not other:
    return ""
  return (f" ({other} made by other gi_jax code, whose results may differ: move the records "
          "away to redo them)")


def report_other_code(records: list[dict], what: str = "records of this run") -> None:
  """Prints :func:`other_code_note` of a run's records found or made, where there is one."""
  note = other_code_note(records)
  if note:
    print(f"{what}:{note}", flush=True)

# Key fields written only where they differ from their default (a recipe's per-group learning-rate
# factors and Adan's betas; the channels an image was read with), so records made before they
# existed keep their keys: a key without one is the default, and matches only records without it.
OPTIONAL_KEY_FIELDS = ("lr_factors", "channels", "adan_betas")


class ResultsFile:
  """A records file such as ``results.json``: ``{"records": [...]}``, rewritten atomically after
  every record, shared safely by runs at once.

  Runs that write one file at the same time (two ``--dataset`` runs into one ``--out_dir``) keep
  each other's records: every write takes an exclusive lock on ``<path>.lock`` (``flock``), reads
  the file again, and merges. The merge relies on what every writer here does to the list: append
  records, or change records in place, never remove or reorder them. So the records this object
  read last are a common base: another run's appends are the file's records past it, its changes
  are the base records that differ in the file, and this object's own changes win over those.
  """

  def __init__(self, path: str, fields: FieldKinds | Callable[[dict], FieldKinds] | None = None):
    """Reads ``path`` if it exists.

    Args:
      path: the JSON file.
      fields: what every record must hold, checked whenever the file is read: field name to kind
        (:data:`NUMBER`, :data:`STRING`, ...), or a function of the record giving them (records
        of different kinds); None checks only that the records are JSON objects.

    Raises:
      errors.InvalidInputError: the file is not a records file of this kind ("unreadable results
        file"; the message says where it is wrong).
    """
    self.path = path
    self.fields = fields
    self.records: list[dict] = []
    # The records as last read or written, each as canonical JSON: the base of the next merge.
    self._base: list[str] = []
    if os.path.exists(path):
      self.records = self._read()
      self._base = [_canonical(r) for r in self.records]

  def _read(self) -> list[dict]:
    try:
      with open(self.path) as f:
        data = json.load(f)
      records = data.get("records") if isinstance(data, dict) else None
      if not isinstance(records, list):
        raise ValueError('not {"records": [...]}')
      for i, record in enumerate(records):
        problem = self._problem(record)
        if problem:
          raise ValueError(f"record {i}: {problem}")
    except (OSError, ValueError) as e:
      raise errors.InvalidInputError(
          f"{self.path}: unreadable results file ({e}); move it away to start afresh") from None
    return records

  def _problem(self, record) -> str | None:
    if not isinstance(record, dict):
      return f"{json.dumps(record)[:40]} is not an object"
    fields = self.fields(record) if callable(self.fields) else (self.fields or {})
    for name, kind in fields.items():
      if name not in record:
        return f"no {name!r}"
      if not _is_kind(record[name], kind):
        return f"{name!r} is {json.dumps(record[name])[:40]}, not {kind}"
    return None

  def matches(self, record: dict, **key) -> bool:
    """Whether ``record`` has every field of ``key``, each with its value, and none of
    :data:`OPTIONAL_KEY_FIELDS` that ``key`` lacks."""
    return (all(k in record and record[k] == v for k, v in key.items()) and
            not any(k in record for k in OPTIONAL_KEY_FIELDS if k not in key))

  def find(self, **key) -> dict | None:
    """The first record that :meth:`matches` ``key``, or None."""
    return next((record for record in self.records if self.matches(record, **key)), None)

  def add(self, *records: dict) -> None:
    """Appends ``records``, each stamped with the :func:`code_digest` of this run, and writes the
    file once (merged with other runs' records)."""
    for record in records:
      record.setdefault("code", code_digest())
    self.records.extend(records)
    self.save()

  def save(self) -> None:
    """Writes the file (after records were added or changed in place), merged under the lock with
    what other runs wrote since this object last read it; :attr:`records` becomes the merge."""
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path + ".lock", "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
      if os.path.exists(self.path):
        self.records = self._merge(self._read())
      with atomic_path(self.path) as tmp:
        with open(tmp, "w") as f:
          json.dump({"records": self.records}, f, indent=1)
      self._base = [_canonical(r) for r in self.records]

  def _merge(self, on_disk: list[dict]) -> list[dict]:
    """This object's records merged with ``on_disk`` (see the class's docstring)."""
    base = self._base
    if len(on_disk) < len(base) or len(self.records) < len(base):
      # Not grown from the base (the file was replaced meanwhile): keep every record of either,
      # once.
      mine = {_canonical(r) for r in self.records}
      return self.records + [r for r in on_disk if _canonical(r) not in mine]
    merged = [mine if _canonical(mine) != was else theirs
              for mine, theirs, was in zip(self.records, on_disk, base)]
    return merged + on_disk[len(base):] + self.records[len(base):]


def _canonical(record) -> str:
  return json.dumps(record, sort_keys=True)


# What a fit record must hold (fit.py's results.json; every record since the first has these).
FIT_RECORD_FIELDS = {"image": STRING, "num_gaussians": INTEGER, "psnr": NUMBER,
                     "fit_seconds": NUMBER, "render_fps": NUMBER}


def check_out_dir(out_dir: str, *names: str) -> None:
  """Checks, before any work, that a run could write ``names`` in ``out_dir``, so that a long run
  is not lost at its end.

  Args:
    out_dir: the run's output folder (need not exist yet).
    names: files the run writes there, relative to it (e.g. ``files/x.gimg`` for a subfolder).

  Raises:
    errors.InvalidInputError: one of them names a folder, or the nearest existing folder above it
      is not a writable folder.
  """
  for name in names:
    check_writable(os.path.join(out_dir, name))


KODAK_NAMES = tuple(f"kodim{i:02d}.png" for i in range(1, 25))
KODAK_SIZES = ((512, 768), (768, 512))


def why_not_full_kodak(sizes: dict[str, tuple[int, int]]) -> str | None:
  """Why a run's images are not the full-size Kodak set, or None if they are.

  Published Kodak figures (the GaussianImage paper's rate–distortion points) are means over the 24
  Kodak images at 768×512 (or 512×768); a curve over other images, a subset, or crops differs by
  content and size, so a comparison with them does not apply.

  Args:
    sizes: the run's images, file name to (height, width) as fitted (after any crop).

  Returns:
    None for the 24 images ``kodim01.png`` … ``kodim24.png`` at full size, else the reason, e.g.
    ``"2 of Kodak's 24 images"`` or ``"image sizes 192×192, not 768×512"``.
  """
  names = set(sizes)
  if not names <= set(KODAK_NAMES):
    others = sorted(names - set(KODAK_NAMES))
    return (f"not Kodak's images ({', '.join(others[:3])}{', …' if len(others) > 3 else ''} "
            "are not kodim01.png … kodim24.png)")
  if len(names) < len(KODAK_NAMES):
    return f"{len(names)} of Kodak's {len(KODAK_NAMES)} images"
  wrong = sorted({(h, w) for h, w in sizes.values() if (h, w) not in KODAK_SIZES})
  if wrong:
    return (f"image sizes {', '.join(f'{w}×{h}' for h, w in wrong)}, not 768×512 (crops or "
            "resized images)")
  return None


def settings_digest(key: dict) -> str:
  """8 hex digits that change with any field of a record key: put in file names, so runs with
  different settings in one folder never overwrite each other's files."""
  return f"{zlib.crc32(json.dumps(key, sort_keys=True).encode()):08x}"


def output_stem(image_path: str, key: dict) -> str:
  """``<name>_n<N>_<settings_digest(key)>``: the name of one record's files."""
  return (f"{os.path.splitext(os.path.basename(image_path))[0]}_n{key['num_gaussians']}"
          f"_{settings_digest(key)}")


def image_metrics(rendered: np.ndarray, target: np.ndarray) -> dict:
  """PSNR and MS-SSIM of a rendered image as an 8-bit PNG of it would hold it."""
  on_disk = io.quantize_8bit(rendered)
  record = {"psnr": float(metrics.psnr(on_disk, target))}
  try:
    record["ms_ssim"] = float(metrics.ms_ssim(on_disk, target))
  except errors.InvalidInputError:
    record["ms_ssim"] = None  # smaller than MS-SSIM's five scales allow
  return record


FPS_SECONDS = flags.DEFINE_float(
    "fps_seconds", 0.5, "Least seconds spent timing each fit's render for its record's render_fps "
    "(fit.py, table1.py; at least 20 renders either way): longer is steadier.", lower_bound=0.0)


def fps_seconds() -> float:
  """``--fps_seconds``, or its default where no command line was parsed (a library caller)."""
  return FPS_SECONDS.value if flags.FLAGS.is_parsed() else FPS_SECONDS.default


@functools.lru_cache(maxsize=None)
def _jitted_render(height: int, width: int, backend: str):
  # One jitted function per size, so a dataset of same-size images compiles the renderer once.
  return jax.jit(lambda g: render(g, height, width, backend))


def measure_render_fps(gaussians, height: int, width: int, backend: str) -> float:
  render_jit = _jitted_render(height, width, backend)
  return 1.0 / median_seconds(lambda: render_jit(gaussians), repeats=20,
                              min_seconds=fps_seconds())


def record_key(image_path: str, num_gaussians: int, steps: int, parameterization: str,
               seed: int, init: str = "random", learning_rate: float = 1e-3,
               lr_schedule: str = "paper", clip_gradient: str = "exact",
               channels: int | None = 3, recipe: recipes.Recipe = recipes.PAPER) -> dict:
  """What identifies a fit in ``results.json`` (a re-run skips records with this key).

  ``recipe`` gives the fields the other arguments do not: its per-group factors (``lr_factors``)
  join the key only when set, and its ``adan_betas`` only when not the reference's; ``channels``
  (how the image was read: :func:`gi_jax.io.load_image`'s, None for what the file has) only when
  not 3. So records made before any of them existed keep their keys.
  """
  key = dict(image=os.path.basename(image_path), num_gaussians=num_gaussians, steps=steps,
             parameterization=parameterization, seed=seed, init=init,
             learning_rate=learning_rate, lr_schedule=lr_schedule, clip_gradient=clip_gradient)
  if recipe.lr_factors is not None:
    key["lr_factors"] = recipe.lr_factors.values()
  if channels != 3:
    key["channels"] = channels
  if recipe.adan_betas != optim.ADAN_BETAS:
    key["adan_betas"] = list(recipe.adan_betas)
  return key


def codec_record_key(settings: CodecSettings) -> dict:
  """What identifies codec settings in an experiment's records (``experiments/compress.py`` and
  ``quantizers.py``): a re-run skips the records with this key, and curves are drawn from them.

  Args:
    settings: the codec settings (the rate, N, and the step counts are keyed apart).

  Returns:
    JSON-ready fields; two settings that encode differently give different keys.
  """
  q = settings.quantizers
  # Both wide fields always (0: none; the rule on every encode is min_pixels 0, whichever field
  # set it, as it encodes alike): a key without them would also match records made with them.
  wide = settings.wide_positions
  return dict(init=settings.init, position_step=q.position_step, stages=q.stages,
              codebook_size=q.codebook_size, cov_bits=q.cov_bits, color_bits=q.color_bits,
              commitment_weight=q.commitment_weight,
              codeword_fraction_bits=q.codeword_fraction_bits,
              parameterization=settings.parameterization, bits_back=settings.bits_back,
              learning_rate=settings.learning_rate,
              finetune_learning_rate=settings.finetune_learning_rate,
              lr_schedule=settings.lr_schedule,
              finetune_lr_schedule=settings.finetune_lr_schedule,
              codebook_sizes=list(settings.codebook_sizes),
              rd_slope=settings.rd_slope if settings.codebook_sizes or settings.refine else None,
              refine=settings.refine, densify=settings.densify is not None,
              wide_sigma=wide.sigma if wide else 0.0,
              wide_min_pixels=wide.min_pixels_per_gaussian if wide else 0.0,
              # Only when set, so that records made before the field existed keep their keys.
              **({} if settings.lr_factors is None else
                 dict(lr_factors=settings.lr_factors.values())))


def _write_outputs(results: ResultsFile, key: dict, image_path: str, target: np.ndarray,
                   result: FitResult, *, out_dir: str, backend: str, figure: bool = False,
                   **extra) -> dict:
  """Writes the render and Gaussians (atomically), with ``figure`` the fit's figure
  (:func:`figures.fit_figure`, ``<stem>_figure.png``), then appends the record: files before
  record, so a record always points at complete files and an interrupted write is redone on
  resume. In a run over several processes only process 0 writes (experiments/multihost.py); the
  others return None."""
  if jax.process_index() != 0:
    return None
  height, width = result.height, result.width
  rendered = np.asarray(result.render(backend))
  stem = output_stem(image_path, key)
  png, npz = os.path.join(out_dir, stem + ".png"), os.path.join(out_dir, stem + ".npz")
  io.save_image(png, rendered)
  save_gaussians(npz, result.gaussians, height, width)
  if figure:
    drawn = os.path.join(out_dir, stem + "_figure.png")
    fit_figure(drawn, target, io.quantize_8bit(rendered), result.gaussians, result.history,
               f"{key['image']}: N={key['num_gaussians']:,}, {result.steps:,} steps, "
               f"{result.fit_seconds:.1f} s")
    extra["figure"] = os.path.basename(drawn)
  record = dict(key, height=height, width=width, backend=backend,
                **image_metrics(rendered, target), fit_seconds=result.fit_seconds,
                compile_seconds=result.compile_seconds, **extra,
                render_fps=measure_render_fps(result.gaussians, height, width, backend),
                peak_bytes=peak_bytes_in_use(),
                # Position 2, covariance 3, colour C numbers each.
                parameters=(5 + result.gaussians.num_channels) * key["num_gaussians"],
                device=str(jax.devices()[0].device_kind), render=os.path.basename(png),
                gaussians=os.path.basename(npz))
  results.add(record)
  return record


def fit_and_record(results: ResultsFile, image_path: str, num_gaussians: int, steps: int, *,
                   out_dir: str, parameterization: str = "cholesky", seed: int = 0,
                   backend: str = "auto", learning_rate: float = 1e-3,
                   init: str = "random", lr_schedule: str = "paper",
                   clip_gradient: str = "exact", bin_reuse: BinReuse | None = BinReuse(),
                   unroll: int = 1, figure: bool = False,
                   recipe: recipes.Recipe = recipes.PAPER, channels: int | None = 3) -> dict:
  """Fits one image, writes its render and Gaussians (with ``figure``, its figure too), and
  appends its record to ``results``.

  A record already in ``results`` for the same image and settings is returned as it is
  (``backend``, ``bin_reuse`` and ``unroll`` change how fast, not what, so they are not part of
  the key). ``recipe`` gives what the other arguments do not: its per-group learning-rate
  factors, Adan's betas and densification (``init``, ``learning_rate``, ``lr_schedule`` and
  ``clip_gradient`` override its fields). ``channels`` is how the image is read
  (:func:`gi_jax.io.load_image`'s: 3, 1, 4, or None for what the file has).
  """
  key = record_key(image_path, num_gaussians, steps, parameterization, seed, init, learning_rate,
                   lr_schedule, clip_gradient, channels, recipe)
  done = results.find(**key)
  if done is not None:
    print(f"{key['image']} N={num_gaussians}: done already, skipped{other_code_note([done])}",
          flush=True)
    return done
  target = io.load_image(image_path, channels=channels)
  height, width, c = target.shape
  print(f"{key['image']} ({width}×{height}{'' if c == 3 else f', {c} channels'}) "
        f"N={num_gaussians} steps={steps}", flush=True)
  t0 = time.perf_counter()
  result = fit(target, num_gaussians, steps, seed=seed, parameterization=parameterization,
               backend=backend, learning_rate=learning_rate, init=init, lr_schedule=lr_schedule,
               clip_gradient=clip_gradient, bin_reuse=bin_reuse, unroll=unroll, recipe=recipe)
  wall = time.perf_counter() - t0
  return _write_outputs(results, key, image_path, target, result, out_dir=out_dir, backend=backend,
                        figure=figure, wall_seconds=wall, batch_size=1, devices=1,
                        seconds_per_image=result.fit_seconds, recipe=recipe.name)


def fit_dataset_and_record(results: ResultsFile, image_paths: list[str], counts: list[int],
                           steps: int, *, out_dir: str, batch_size: int | str = 1,
                           parameterization: str = "cholesky", seed: int = 0,
                           backend: str = "auto", learning_rate: float = 1e-3,
                           init: str = "random", lr_schedule: str = "paper",
                           clip_gradient: str = "exact", mesh=None,
                           bin_reuse: BinReuse | None = BinReuse(), unroll: int = 1,
                           figure: bool = False, recipe: recipes.Recipe = recipes.PAPER,
                           channels: int | None = 3) -> list[dict]:
  """Fits every image at every Gaussian count in batches, writing each image as its batch ends.

  Images already in ``results`` (same key) are skipped, so an interrupted run resumes where it
  stopped: at most the batch in flight is lost, and every file is written atomically. Counts run in
  increasing order (see :func:`gi_jax.memory.peak_bytes_in_use`). Every image uses ``seed``, as in
  :func:`fit_and_record`, so batched and single records are interchangeable.

  Args:
    results: the results file to skip from and append to.
    image_paths: the images.
    counts: Gaussian counts.
    steps: optimisation steps.
    out_dir: where renders and Gaussians go.
    batch_size: images per batch, or ``"auto"`` (the largest that fits in free device memory).
    parameterization, seed, backend, learning_rate, init, lr_schedule, clip_gradient, bin_reuse,
      unroll, figure, recipe, channels: as for :func:`fit_and_record`.
    mesh: devices to shard batches over (default: :func:`gi_jax.sharding.default_mesh`).

  Returns:
    The records of every image and count, in (count, image) order.

  Raises:
    ImageTooLargeError: a batch cannot fit in device memory (the message names a batch size that
      would).
  """
  for n in sorted(counts):
    keys = [record_key(p, n, steps, parameterization, seed, init, learning_rate, lr_schedule,
                       clip_gradient, channels, recipe) for p in image_paths]
    found = [results.find(**key) for key in keys]
    pending = [i for i, done in enumerate(found) if done is None]
    skipped = len(image_paths) - len(pending)
    if skipped:
      note = other_code_note([done for done in found if done is not None])
      print(f"N={n}: {skipped} of {len(image_paths)} images done already, skipped{note}",
            flush=True)
    if not pending:
      continue
    print(f"N={n}: fitting {len(pending)} images, steps={steps}, batch_size={batch_size}",
          flush=True)

    def on_result(j, result, batch, keys=keys, pending=pending):
      # Called once per image, right after its batch: ``batch`` lists the images fitted with it.
      i, size = pending[j], len(batch)
      _write_outputs(results, keys[i], image_paths[i],
                     io.load_image(image_paths[i], channels=channels), result,
                     out_dir=out_dir, backend=backend, figure=figure,
                     wall_seconds=result.compile_seconds + result.fit_seconds,
                     batch_size=size, devices=_devices_of(mesh, size),
                     seconds_per_image=result.fit_seconds / size, recipe=recipe.name)

    fit_dataset([image_paths[i] for i in pending], n, steps, seeds=[seed] * len(pending),
                batch_size=batch_size, on_result=on_result, progress=True,
                parameterization=parameterization, learning_rate=learning_rate, backend=backend,
                init=init, lr_schedule=lr_schedule, clip_gradient=clip_gradient, mesh=mesh,
                bin_reuse=bin_reuse, unroll=unroll, recipe=recipe, channels=channels)
  return [results.find(**record_key(p, n, steps, parameterization, seed, init, learning_rate,
                                    lr_schedule, clip_gradient, channels, recipe))
          for n in sorted(counts) for p in image_paths]


def _devices_of(mesh, batch_size: int) -> int:
  """How many devices a batch of ``batch_size`` was sharded over."""
  return int((mesh or default_mesh(batch_size)).shape["batch"])


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
  """Right-aligned plain-text table.

  Args:
    rows: records; a missing or None value prints as ``-``.
    columns: ``(key, title, format)`` triples, e.g. ``("psnr", "PSNR dB", "{:.2f}")``.
  """
  table = [[title for _, title, _ in columns]]
  for r in rows:
    table.append(["-" if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in columns])
  widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
  return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table)


FIT_COLUMNS = [(k, k, fmt) for k, fmt in (
    ("image", "{}"), ("num_gaussians", "{}"), ("steps", "{}"), ("psnr", "{:.2f}"),
    ("ms_ssim", "{:.4f}"), ("fit_seconds", "{:.1f}"), ("render_fps", "{:.0f}"))]


def print_table(records: list[dict]) -> None:
  """A plain-text summary table of fit records."""
  print(format_table(records, FIT_COLUMNS))


def _mean(values) -> float | None:
  values = [v for v in values]
  if not values or any(v is None for v in values):
    return None
  return float(np.mean(values))


def summarize(records: list[dict]) -> list[dict]:
  """Per Gaussian count, the columns of the paper's Table 1, averaged over images.

  Returns:
    One row per count (ascending): ``num_gaussians``, ``images``, ``psnr``, ``ms_ssim`` (None if any
    image is too small for it), ``fit_seconds`` (the fits' run time; a batch's time is every one
    of its images' time), ``seconds_per_image`` (fit time divided by the batch size),
    ``render_fps``, ``peak_bytes`` (the largest reading, None where the device reports none) and
    ``parameters`` (8 per Gaussian).
  """
  rows = []
  for n in sorted({r["num_gaussians"] for r in records}):
    group = [r for r in records if r["num_gaussians"] == n]
    peaks = [r.get("peak_bytes") for r in group if r.get("peak_bytes") is not None]
    rows.append(dict(
        num_gaussians=n, images=len(group), psnr=_mean(r["psnr"] for r in group),
        ms_ssim=_mean(r.get("ms_ssim") for r in group),
        fit_seconds=_mean(r["fit_seconds"] for r in group),
        seconds_per_image=_mean(r.get("seconds_per_image", r["fit_seconds"]) for r in group),
        render_fps=_mean(r["render_fps"] for r in group),
        peak_bytes=max(peaks) if peaks else None, parameters=8 * n))
  return rows


SUMMARY_COLUMNS = (("num_gaussians", "N", "{}"), ("images", "images", "{}"),
                   ("psnr", "PSNR dB", "{:.2f}"), ("ms_ssim", "MS-SSIM", "{:.4f}"),
                   ("fit_seconds", "fit s", "{:.1f}"), ("seconds_per_image", "s/image", "{:.1f}"),
                   ("render_fps", "FPS", "{:.0f}"), ("peak_bytes", "peak MiB", "{:.1f}"),
                   ("parameters", "params", "{}"))


def print_summary(rows: list[dict]) -> None:
  """Prints :func:`summarize` rows as a plain-text table in the paper's Table 1 columns."""
  rows = [dict(r, peak_bytes=None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**20)
          for r in rows]
  print(format_table(rows, SUMMARY_COLUMNS))


def write_json(path: str, data) -> None:
  """Writes ``data`` as indented JSON to ``path``, atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      json.dump(data, f, indent=1)


def write_summary(out_dir: str, rows: list[dict], plot: bool = True) -> tuple[str, str | None]:
  """Writes ``summary.json`` and, with ``plot``, ``summary.png`` (PSNR against N and against fit
  time), atomically.

  Returns:
    The two paths (None for the figure not drawn).
  """
  json_path = os.path.join(out_dir, "summary.json")
  with atomic_path(json_path) as tmp:
    with open(tmp, "w") as f:
      json.dump({"rows": rows}, f, indent=1)
  if not plot:
    return json_path, None
  png_path = os.path.join(out_dir, "summary.png")
  plot_summary(png_path, rows)
  return json_path, png_path


def plot_summary(path: str, rows: list[dict]) -> None:
  """A PNG figure: mean PSNR against the number of Gaussians and against fit time per image."""
  plt = pyplot()
  counts = [r["num_gaussians"] for r in rows]
  psnr = [r["psnr"] for r in rows]
  seconds = [r["seconds_per_image"] for r in rows]
  figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  left.plot(counts, psnr, "o-")
  left.set_xlabel("number of Gaussians")
  left.set_ylabel("PSNR (dB)")
  right.plot(seconds, psnr, "o-")
  right.set_xlabel("fit time per image (s)")
  right.set_ylabel("PSNR (dB)")
  for n, p, t in zip(counts, psnr, seconds):
    right.annotate(f"N={n}", (t, p), textcoords="offset points", xytext=(4, -10), fontsize=8)
  for axis in (left, right):
    axis.grid(True, alpha=0.3)
  images = max((r["images"] for r in rows), default=0)
  figure.suptitle(f"GaussianImage fits: mean over {images} image{'s' * (images != 1)}")
  figure.tight_layout()
  save_figure(figure, path)
