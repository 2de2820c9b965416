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
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags
import numpy as np

from gi_jax import codec, errors, io
from gi_jax.codec.pipeline import CPU_STEPS, default_steps
from harness import (INTEGER, NUMBER, OBJECT, STRING, ResultsFile, check_out_dir, codec_record_key,
                     format_table, image_metrics, positive_integers, run_failed, select_images)

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  settings = codec.OURS if _SETTINGS.value == "ours" else codec.PAPER
  steps, finetune_steps, _ = default_steps(settings, _STEPS.value, _FINETUNE_STEPS.value)
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
      target = io.load_image(path)
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
