"""Which quantizer settings pay for their bits: codec variants fine-tuned from one shared fit (#6).

For each image and Gaussian count the image is fitted once (``--settings``' fitting options); every
variant then fine-tunes that same fit through its own quantizers, writes its file and decodes it
from the bytes. Sharing the fit isolates the quantizers: a variant's PSNR differs from the first
variant's only through what it quantizes and how many bits that takes. The settings' colour
refinement (``CodecSettings.refine``) runs after each fine-tuning, as in the codec. Records bpp,
PSNR and MS-SSIM of the decoded image, and the quantization loss (float fit PSNR minus decoded
PSNR).

A variant is ``NAME:FIELD=VALUE,FIELD=VALUE`` over :class:`gi_jax.codec.QuantizerConfig`'s fields
(``NAME:`` alone keeps the settings' quantizers). The first variant is the baseline: with two or
more counts every other variant gets its BD-rate against it (mean curves over the images).

Usage (from the repo root):
  python experiments/quantizers.py                                     # bundled sample, CPU steps
  python experiments/quantizers.py --dataset=../shared/data/kodak \\
      --images=kodim03.png,kodim23.png --num_gaussians=800,3000 \\
      --variant=ours: --variant=codebook32:codebook_size=32

Writes ``<out_dir>/quantizers.json`` (one record per image, count and variant; resumable: records
already there are skipped and an image is refitted only if one of its variants is missing) and
prints a table of means over images per variant and count.

The bit-depth study (``--bit_sweep``, the paper's open question: which attribute needs its bits)
fine-tunes the settings' codec once per image and count, then lowers one attribute's precision at a
time in that file's symbols, from the default down to 1 bit, and encodes and decodes each such file
for real (:func:`coarsen`): the grid positions (both axes), each covariance channel alone, the
colours (uniform codes of the decoded colours, 8 bits per channel down to 1, in place of the residual
VQ). Records ``<out_dir>/bit_depth.json`` (bits saved per Gaussian from the files' sizes, PSNR loss
against the unchanged file) and plots ``bit_depth.png``::

  python experiments/quantizers.py --bit_sweep --dataset=../shared/data/kodak --center_crop=256 \\
      --max_images=4 --num_gaussians=1000 --out_dir=results/bit_depth/kodak_crops_cpu
"""

from __future__ import annotations

import dataclasses
import math
import os

from absl import app, flags
import numpy as np

from gi_jax import codec, errors, io
from gi_jax.codec.pipeline import CPU_STEPS, default_steps
from gi_jax.codec.quantize import QuantizedGaussians
from harness import (INTEGER, NUMBER, OBJECT, STRING, ResultsFile, check_out_dir, codec_record_key,
                     format_table, image_metrics, positive_integers, pyplot, report_other_code,
                     run_failed, save_figure, select_images)

DEFAULT_VARIANTS = ["ours:", "codebook32:codebook_size=32", "grid0.5:position_step=0.5"]

_DATASET = flags.DEFINE_string("dataset", None, "Folder of images (default: the bundled sample).")
_IMAGES = flags.DEFINE_list("images", None, "Use only these file names from --dataset.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Use only the first N images (by name).",
                                    lower_bound=1)
_NUM_GAUSSIANS = flags.DEFINE_list("num_gaussians", ["800", "3000"], "Gaussian counts.")
_STEPS = flags.DEFINE_integer("steps", None, "Fitting steps (default: the settings' on a GPU, "
                              f"else {CPU_STEPS[0]}).")
_FINETUNE_STEPS = flags.DEFINE_integer(
    "finetune_steps", None,
    f"Fine-tuning steps per variant (default: the settings' on a GPU, else {CPU_STEPS[1]}).")
_SETTINGS = flags.DEFINE_enum("settings", "ours", ["ours", "paper"],
                              "Codec settings the variants start from.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", DEFAULT_VARIANTS, "NAME:FIELD=VALUE,... over QuantizerConfig; the first is the "
    "baseline.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation and k-means seed.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer: auto, reference or pallas.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/quantizers", "Where to write results.")
_BIT_SWEEP = flags.DEFINE_bool(
    "bit_sweep", False, "The bit-depth study instead of the variants: one attribute's precision "
    "lowered at a time in the settings' file (see the module's docstring).")
_CENTER_CROP = flags.DEFINE_integer("center_crop", None, "Use the centre SxS crop of each image "
                                    "(images smaller than S are an error).", lower_bound=1)

# The attributes the bit-depth study lowers one at a time: grid positions, covariance channels
# (chol_raw's, or scale x, scale y, angle for RS), colours.
BIT_ATTRIBUTES = ("positions", "cov0", "cov1", "cov2", "colors")
# Uniform colour codes start here: 8 bits per channel, the precision of the image itself.
COLOR_BITS = 8


def parse_variant(text: str, base: codec.QuantizerConfig) -> tuple[str, dict]:
  """``"NAME:FIELD=VALUE,..."`` → ``(name, overrides)``, each value of its field's type.

  Raises:
    errors.InvalidInputError: no name, an unknown field, or a value of the wrong type or range.
  """
  name, sep, rest = text.partition(":")
  if not sep or not name:
    raise errors.InvalidInputError(f"variant {text!r}: expected NAME:FIELD=VALUE,...")
  fields = {f.name for f in dataclasses.fields(base)}
  overrides = {}
  for item in filter(None, rest.split(",")):
    field, eq, value = item.partition("=")
    if not eq or field not in fields:
      raise errors.InvalidInputError(
          f"variant {name!r}: {item!r} is not FIELD=VALUE with FIELD one of {sorted(fields)}")
    kind = type(getattr(base, field))
    try:
      overrides[field] = kind(value)
    except ValueError:
      raise errors.InvalidInputError(f"variant {name!r}: {field}={value!r} is not "
                                     f"{'an integer' if kind is int else 'a number'}")
  dataclasses.replace(base, **overrides)  # its own range checks
  return name, overrides


def summarize(records: list[dict], variants: list[str]) -> list[dict]:
  """Means over the images each (count, variant) has, with BD-rates against the first variant."""
  rows, curves = [], {}
  for name in variants:
    mine = [r for r in records if r["variant"] == name]
    for n in sorted({r["num_gaussians"] for r in mine}):
      at = [r for r in mine if r["num_gaussians"] == n]
      rows.append(dict(variant=name, num_gaussians=n, images=len(at),
                       bpp=float(np.mean([r["bpp"] for r in at])),
                       psnr=float(np.mean([r["psnr"] for r in at])),
                       quantization_loss=float(np.mean([r["fit_psnr"] - r["psnr"] for r in at]))))
    curves[name] = [(row["bpp"], row["psnr"]) for row in rows if row["variant"] == name]
  base = np.asarray(curves[variants[0]]).T
  bd_rates = {}
  for name in variants[1:]:
    mine = np.asarray(curves[name]).T
    if len(curves[name]) >= 2 and len(curves[variants[0]]) >= 2:
      try:
        bd_rates[name] = codec.bd_rate(base[0], base[1], mine[0], mine[1])
      except errors.InvalidInputError:
        pass  # the curves do not overlap in PSNR
  for row in rows:
    row["bd_rate"] = bd_rates.get(row["variant"])
  return rows


def record_fields(record: dict) -> dict:
  """What a record of ``quantizers.json`` must hold: what the summary reads, and for records from
  before the quantizers were recorded, what :func:`legacy_quantizers` reads."""
  fields = dict(variant=STRING, num_gaussians=INTEGER, bpp=NUMBER, psnr=NUMBER, fit_psnr=NUMBER)
  if "quantizers" not in record:
    fields.update(settings=STRING, overrides=OBJECT)
  return fields


def legacy_quantizers(record: dict) -> dict:
  """The full quantizer settings of a record written before they were recorded: its settings'
  with its overrides, and float16 codewords (files made before fixed-point codewords)."""
  settings = codec.OURS if record["settings"] == "ours" else codec.PAPER
  config = dataclasses.replace(settings.quantizers, codeword_fraction_bits=0)
  return dataclasses.asdict(dataclasses.replace(config, **record["overrides"]))


def default_bits(q: QuantizedGaussians, attribute: str) -> int:
  """Bits per value ``attribute`` has in ``q``: per grid axis for positions (the larger axis),
  ``cov_bits`` per covariance channel, :data:`COLOR_BITS` for the colours' uniform codes."""
  if attribute == "positions":
    if q.position_cells is None:
      raise errors.InvalidInputError("the bit-depth study lowers grid positions; these settings "
                                     "keep float16 positions (position_step=0)")
    return max(1, math.ceil(math.log2(max(q.position_cells))))
  if attribute in ("cov0", "cov1", "cov2"):
    return q.cov_bits
  if attribute == "colors":
    return COLOR_BITS
  raise errors.InvalidInputError(f"unknown attribute {attribute!r}; one of {BIT_ATTRIBUTES}")


def _to_multiple(codes: np.ndarray, drop: int, largest: int) -> np.ndarray:
  """Codes rounded to the nearest multiple of ``2**drop`` no larger than ``largest``'s multiple.

  Multiples of 2 are even cells, so wide Gaussians (on even cells) stay on their grid.
  """
  step = 1 << drop
  top = (largest // step) * step
  return np.minimum(np.round(codes / step) * step, top).astype(codes.dtype)


def coarsen(q: QuantizedGaussians, attribute: str, bits: int) -> QuantizedGaussians:
  """``q`` with one attribute at ``bits`` bits per value, everything else unchanged.

  Positions and covariance channels keep their alphabet, their codes rounded to multiples of
  ``2**(default − bits)`` (so about ``2**bits`` values are used and the file's adaptive models
  spend about ``bits`` on each); colours become uniform codes of ``bits`` per channel over the
  range of ``q``'s decoded colours (the file's uniform-colour layout). With wide positions, a
  coarser covariance channel can make a Gaussian wide; the encoder then puts it on the even cell
  below its own (``streams.on_even_cells``), so its position moves by at most one cell too.

  Args:
    q: a quantized set with grid positions.
    attribute: one of :data:`BIT_ATTRIBUTES`.
    bits: 1 to :func:`default_bits`.

  Returns:
    The coarser set (NumPy arrays).

  Raises:
    errors.InvalidInputError: an unknown attribute, float16 positions or bits out of range.
  """
  full = default_bits(q, attribute)
  if not 1 <= bits <= full:
    raise errors.InvalidInputError(f"{attribute}: bits must lie in [1, {full}], got {bits}")
  q = q.to_numpy()
  if attribute == "positions":
    cells = np.asarray(q.position_cells)
    codes = np.stack([_to_multiple(q.position_codes[:, i].astype(np.int64), full - bits,
                                   int(cells[i]) - 1) for i in range(2)], axis=1)
    return dataclasses.replace(q, position_codes=codes.astype(q.position_codes.dtype))
  if attribute.startswith("cov"):
    channel = int(attribute[3])
    codes = q.cov_codes.copy()
    codes[:, channel] = _to_multiple(codes[:, channel].astype(np.int64), full - bits,
                                     (1 << q.cov_bits) - 1)
    return dataclasses.replace(q, cov_codes=codes)
  colors = np.asarray(q.dequantize().colors, np.float32)
  lo, hi = colors.min(axis=0), colors.max(axis=0)
  scale = np.where(hi > lo, (hi - lo) / ((1 << bits) - 1), 1.0).astype(np.float32)
  codes = np.clip(np.round((colors - lo) / scale), 0, (1 << bits) - 1).astype(np.uint8)
  return dataclasses.replace(q, color_indices=codes, codebooks=None, color_scale=scale,
                             color_offset=lo.astype(np.float32), color_bits=bits)


def bit_depth_fields(record: dict) -> dict:
  """What a record of ``bit_depth.json`` must hold."""
  del record
  return dict(image=STRING, num_gaussians=INTEGER, attribute=STRING, bits=INTEGER, bpp=NUMBER,
              psnr=NUMBER, bits_saved_per_gaussian=NUMBER, psnr_loss=NUMBER)


def summarize_bit_depth(records: list[dict]) -> list[dict]:
  """Means over images per (count, attribute, bits), the unchanged file's rows first."""
  groups = {}
  for r in records:
    groups.setdefault((r["num_gaussians"], r["attribute"], r["bits"]), []).append(r)
  order = {a: i for i, a in enumerate(("baseline",) + BIT_ATTRIBUTES)}
  rows = []
  for (n, attribute, bits), at in sorted(groups.items(),
                                         key=lambda kv: (kv[0][0], order[kv[0][1]], -kv[0][2])):
    rows.append(dict(num_gaussians=n, attribute=attribute, bits=bits, images=len(at),
                     bpp=float(np.mean([r["bpp"] for r in at])),
                     psnr=float(np.mean([r["psnr"] for r in at])),
                     bits_saved_per_gaussian=float(np.mean([r["bits_saved_per_gaussian"]
                                                            for r in at])),
                     psnr_loss=float(np.mean([r["psnr_loss"] for r in at]))))
  return rows


def plot_bit_depth(path: str, rows: list[dict], title: str) -> None:
  """PSNR loss against bits saved per Gaussian, one curve per attribute (and count)."""
  plt = pyplot()
  figure, axis = plt.subplots(figsize=(7, 4.5))
  for n in sorted({r["num_gaussians"] for r in rows}):
    for attribute in BIT_ATTRIBUTES:
      mine = [r for r in rows if r["num_gaussians"] == n and r["attribute"] == attribute]
      if not mine:
        continue
      label = attribute if len({r["num_gaussians"] for r in rows}) == 1 else f"{attribute} N={n}"
      axis.plot([r["bits_saved_per_gaussian"] for r in mine], [r["psnr_loss"] for r in mine],
                "o-", label=label)
      for r in mine:
        axis.annotate(str(r["bits"]), (r["bits_saved_per_gaussian"], r["psnr_loss"]),
                      textcoords="offset points", xytext=(3, 3), fontsize=7)
  axis.set_xlabel("bits saved per Gaussian (from file sizes)")
  axis.set_ylabel("PSNR loss (dB)")
  axis.set_yscale("symlog", linthresh=0.1)
  axis.grid(True, alpha=0.3)
  axis.legend(fontsize=8)
  axis.set_title(title, fontsize=9)
  figure.tight_layout()
  save_figure(figure, path)


def load_target(path: str, crop: int | None) -> np.ndarray:
  """An image, or its centre ``crop``×``crop``."""
  target = io.load_image(path)
  if crop is None:
    return target
  height, width = target.shape[:2]
  if height < crop or width < crop:
    raise errors.InvalidInputError(f"{path} is {width}x{height}, smaller than --center_crop={crop}")
  top, left = (height - crop) // 2, (width - crop) // 2
  return np.ascontiguousarray(target[top:top + crop, left:left + crop])


def encoded_record(q: QuantizedGaussians, target: np.ndarray, settings, backend: str) -> dict:
  """bytes, bpp and PSNR of ``q`` encoded and decoded from its bytes."""
  height, width = target.shape[:2]
  data = codec.encode(q, height, width, bits_back=settings.bits_back)
  decoded, info = codec.decode(data, backend=backend)
  return dict(bytes=len(data), bpp=info["bpp"], **image_metrics(decoded, target))


def run_bit_sweep(settings, steps: int, finetune_steps: int) -> None:
  """The bit-depth study (``--bit_sweep``): records, table and plot."""
  counts = positive_integers(_NUM_GAUSSIANS.value)
  paths = select_images(_DATASET.value, _IMAGES.value, _MAX_IMAGES.value)
  check_out_dir(_OUT_DIR.value, "bit_depth.json", "bit_depth.png")
  results = ResultsFile(os.path.join(_OUT_DIR.value, "bit_depth.json"), bit_depth_fields)
  mine = []
  for path in paths:
    name = os.path.basename(path)
    target = load_target(path, _CENTER_CROP.value)
    height, width = target.shape[:2]
    for n in counts:
      key = dict(image=name, center_crop=_CENTER_CROP.value, num_gaussians=n, steps=steps,
                 finetune_steps=finetune_steps, seed=_SEED.value, settings=_SETTINGS.value,
                 codec=codec_record_key(settings))
      # An image and count's rows are written together, so a baseline row means all of them.
      if results.find(**key, attribute="baseline"):
        mine.extend(r for r in results.records if results.matches(r, **key))
        continue
      # One fit and one fine-tuning per image and count: every row changes only its attribute.
      fitted = settings.fit(target, n, steps, seed=_SEED.value, backend=_BACKEND.value)
      config = settings.quantizers_for(height, width, n)
      tuned = settings.finetune(fitted, target, finetune_steps, seed=_SEED.value,
                                backend=_BACKEND.value, quantizers=config)
      tuned, _ = settings.refined(tuned, target, config, _BACKEND.value)
      base_q = tuned.quantized.to_numpy()
      base = encoded_record(base_q, target, settings, _BACKEND.value)
      rows = [dict(key, attribute="baseline", bits=0, default_bits=0, **base)]
      for attribute in BIT_ATTRIBUTES:
        full = default_bits(base_q, attribute)
        for bits in range(full if attribute == "colors" else full - 1, 0, -1):
          made = encoded_record(coarsen(base_q, attribute, bits), target, settings,
                                _BACKEND.value)
          rows.append(dict(key, attribute=attribute, bits=bits, default_bits=full, **made))
          print(f"{name} N={n} {attribute} {bits} bits: {made['bpp']:.4f} bpp  PSNR "
                f"{made['psnr']:.2f} dB (unchanged {base['bpp']:.4f}, {base['psnr']:.2f})",
                flush=True)
      for row in rows:
        row.update(bits_saved_per_gaussian=8.0 * (base["bytes"] - row["bytes"]) / n,
                   psnr_loss=base["psnr"] - row["psnr"], height=height, width=width)
      results.add(*rows)
      mine.extend(rows)
  report_other_code(mine)
  summary = summarize_bit_depth(mine)
  print(f"{len(paths)} image(s), {steps} + {finetune_steps} steps, {_SETTINGS.value} settings; "
        "means over images (bits saved per Gaussian from the files' sizes)")
  print(format_table(summary, [("num_gaussians", "N", "{}"), ("attribute", "attribute", "{}"),
                               ("bits", "bits", "{}"), ("images", "images", "{}"),
                               ("bpp", "bpp", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"),
                               ("bits_saved_per_gaussian", "bits saved/G", "{:.2f}"),
                               ("psnr_loss", "PSNR loss dB", "{:.3f}")]))
  crop = f", centre {_CENTER_CROP.value}² crops" if _CENTER_CROP.value else ""
  plot_bit_depth(os.path.join(_OUT_DIR.value, "bit_depth.png"),
                 [r for r in summary if r["attribute"] != "baseline"],
                 f"one attribute's precision lowered at a time\n{len(paths)} image(s){crop}, "
                 f"{steps} + {finetune_steps} steps, {_SETTINGS.value} settings")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  settings = codec.OURS if _SETTINGS.value == "ours" else codec.PAPER
  steps, finetune_steps, _ = default_steps(settings, _STEPS.value, _FINETUNE_STEPS.value)
  if _BIT_SWEEP.value:
    try:
      run_bit_sweep(settings, steps, finetune_steps)
    except errors.GIError as e:
      raise run_failed(e) from None
    return
  try:
    counts = positive_integers(_NUM_GAUSSIANS.value)
    variants = dict(parse_variant(v, settings.quantizers) for v in _VARIANTS.value)
    if len(variants) != len(_VARIANTS.value):
      raise errors.InvalidInputError("two variants share a name")
    paths = select_images(_DATASET.value, _IMAGES.value, _MAX_IMAGES.value)
    check_out_dir(_OUT_DIR.value, "quantizers.json")
    results = ResultsFile(os.path.join(_OUT_DIR.value, "quantizers.json"), record_fields)
    for record in results.records:
      try:
        record.setdefault("quantizers", legacy_quantizers(record))
      except (TypeError, ValueError) as e:  # overrides that are not QuantizerConfig's fields
        raise errors.InvalidInputError(f"{results.path}: unreadable results file (a record's "
                                       f"overrides: {e}); move it away to start afresh") from None
      record.setdefault("refine", False)  # records from before colour refinement
    mine = []  # this run's records, found or made
    for path in paths:
      name = os.path.basename(path)
      target = load_target(path, _CENTER_CROP.value)
      height, width = target.shape[:2]
      for n in counts:
        # Each variant changes the quantizers this image and N get (wide positions or not).
        configs = {variant: dataclasses.replace(settings.quantizers_for(height, width, n),
                                                **overrides)
                   for variant, overrides in variants.items()}
        # The whole configuration is in the key (the codec settings as compress.py keys them,
        # and the variant's quantizers): a variant named as before but run after a change of
        # the settings' defaults is a new record, not a resumed one.
        keys = {variant: dict(image=name, num_gaussians=n, steps=steps,
                              finetune_steps=finetune_steps, seed=_SEED.value,
                              settings=_SETTINGS.value, variant=variant, overrides=overrides,
                              quantizers=dataclasses.asdict(configs[variant]),
                              refine=settings.refine, codec=codec_record_key(settings))
                for variant, overrides in variants.items()}
        pending = {v: k for v, k in keys.items() if not results.find(**k)}
        if pending:
          fitted = settings.fit(target, n, steps, seed=_SEED.value, backend=_BACKEND.value)
          fit_psnr = image_metrics(np.asarray(fitted.render(_BACKEND.value)), target)["psnr"]
        for variant, key in pending.items():
          tuned = settings.finetune(fitted, target, finetune_steps, seed=_SEED.value,
                                    backend=_BACKEND.value, quantizers=configs[variant])
          tuned, _ = settings.refined(tuned, target, configs[variant], _BACKEND.value)
          data = codec.encode(tuned.quantized, height, width, bits_back=settings.bits_back)
          decoded, info = codec.decode(data, backend=_BACKEND.value)
          record = dict(key, height=height, width=width, bytes=len(data), bpp=info["bpp"],
                        header_bytes=info["header_bytes"], fit_psnr=fit_psnr,
                        best_step=tuned.best_step, **image_metrics(decoded, target))
          results.add(record)
          print(f"{name} N={n} {variant}: {record['bpp']:.4f} bpp  PSNR {record['psnr']:.2f} dB "
                f"(fit {fit_psnr:.2f})", flush=True)
        mine.extend(results.find(**k) for k in keys.values())
  except errors.GIError as e:
    raise run_failed(e) from None

  report_other_code(mine)
  rows = summarize(mine, list(variants))
  print(f"{len(paths)} image(s), {steps} + {finetune_steps} steps, {_SETTINGS.value} settings; "
        f"BD-rate against {next(iter(variants))!r} (negative: fewer bits for the same PSNR)")
  print(format_table(rows, [("variant", "variant", "{}"), ("num_gaussians", "N", "{}"),
                            ("images", "images", "{}"), ("bpp", "bpp", "{:.4f}"),
                            ("psnr", "PSNR", "{:.2f}"),
                            ("quantization_loss", "quant. loss dB", "{:.2f}"),
                            ("bd_rate", "BD-rate %", "{:+.1f}")]))


if __name__ == "__main__":
  app.run(main)
