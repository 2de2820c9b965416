"""Rate–distortion of the GaussianImage codec against JPEG, WebP, JPEG 2000 and AVIF (#6).

For each image and Gaussian count: fit, fine-tune through the quantizers, write the ``.gimg`` file
(:func:`gi_jax.codec.encode_image`; ``--settings=ours`` by default, ``--settings=paper`` for the
paper's random init and float16 positions),
read it back and decode it from its bytes alone; record PSNR and MS-SSIM of the decoded 8-bit image,
bpp (``8·bytes/(H·W)``), encode seconds, decode seconds (whole decode from the bytes; the render
alone, jitted and synchronised) and the bits-back saving. The same images are compressed with
Pillow's JPEG, WebP, JPEG 2000 and AVIF across quality settings. Every curve is written in
CompressAI's results-JSON layout, drawn in one figure (PSNR and MS-SSIM against bpp) with the
GaussianImage paper's Kodak points, and summarised by BD-rates of ours against each.

Usage (from the repo root):
  # our codec on Kodak (GPU: 10,000 fitting + 5,000 fine-tuning steps, batched):
  python experiments/compress.py --dataset=../shared/data/kodak
  # the paper's Kodak protocol (GPU; 50,000 fitting and 50,000 fine-tuning steps):
  python experiments/compress.py --dataset=../shared/data/kodak --settings=paper
  # a CPU run on small crops, counts scaled by area (same Gaussians per pixel as on 768×512;
  # MS-SSIM needs crops > 160 px):
  python experiments/compress.py --dataset=../shared/data/kodak --max_images=2 --crop=256 \\
      --num_gaussians=1000,3000,9000 --scale_by_area

Writes to ``--out_dir``: ``records.json`` (one record per image and count; resumable: records
already there are skipped), ``gaussianimage.json`` and ``<codec>.json`` (CompressAI layout: means
over images per rate point), ``bd_rate.json``, ``rd.png``, and the files under ``files/``.
Their decode throughput in batches is ``experiments/decode_speed.py``'s:
``python experiments/decode_speed.py --files=OUT_DIR/files``. With experiments/multihost.py's flags
the run spans processes, the same command in each: every process encodes, process 0 writes,
decodes and measures.
"""

from __future__ import annotations

import dataclasses
import io as pyio
import os
import textwrap
import time

from absl import app, flags
import jax
import numpy as np
from PIL import Image, features

from gi_jax import codec, errors, io, optim, recipes
from gi_jax.codec.render import render_decoded
from gi_jax.codec.format import bits_back_report, bits_per_pixel, decode_quantized
from gi_jax.codec.pipeline import CPU_STEPS, default_steps, override_wide
from gi_jax.codec.quantize import fixed_length_bits
from gi_jax.codec.rd import quality_at_rates
from gi_jax.codec.refine import RefineResult
from gi_jax.densify import DensifySchedule
from gi_jax.fitting import psnr_from_mse
from gi_jax.memory import auto_batch_size
from gi_jax.storage import atomic_path
from gi_jax.timing import median_seconds
import multihost
from harness import (FILE_NAME, INTEGER, NUMBER, OPTIONAL_NUMBER, STRING, ResultsFile, centre_crop,
                     check_out_dir, codec_record_key, file_in, image_metrics, numbers,
                     positive_integers, pyplot, report_other_code, run_failed, save_figure,
                     scaled_count, select_images, settings_digest, why_not_full_kodak, write_json)

PAPER_COUNTS = ["800", "1000", "3000", "5000", "7000", "9000"]
# GaussianImage (Cholesky), Kodak, paper Fig. 4 / released results: (bpp, PSNR).
PUBLISHED_KODAK = ([0.120, 0.148, 0.431, 0.717, 1.000, 1.285],
                   [24.71, 25.07, 27.41, 28.75, 29.66, 30.50])
PAPER_CURVE = "GaussianImage (paper, Kodak)"  # its name among the curves and BD-rate anchors


def record_fields(record: dict) -> dict:
  """What a record of ``records.json`` must hold (every version of this script wrote these): the
  summary and ``--recode`` read them."""
  fields = dict(codec=STRING, image=STRING, psnr=NUMBER, ms_ssim=OPTIONAL_NUMBER, bpp=NUMBER,
                encode_seconds=NUMBER, decode_seconds=NUMBER)
  if record.get("codec") == "ours":
    # A bare name: the file is read, and rewritten by --recode, in <out_dir>/files only.
    return dict(fields, nominal_gaussians=INTEGER, file=FILE_NAME)
  return dict(fields, setting=NUMBER)


_DATASET = flags.DEFINE_string("dataset", None, "Folder of images (default: the bundled sample).")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Use only the first N images (by name).",
                                    lower_bound=1)
_CROP = flags.DEFINE_integer("crop", 0, "Use a centred crop this many pixels square (0: whole).",
                              lower_bound=0)
_NUM_GAUSSIANS = flags.DEFINE_list("num_gaussians", PAPER_COUNTS,
                                   "Gaussian counts (the paper's Kodak list by default).")
_SCALE_BY_AREA = flags.DEFINE_bool(
    "scale_by_area", False, "Scale each count by (image pixels)/(768·512), for crops.")
_STEPS = flags.DEFINE_integer(
    "steps", None, f"Fitting steps (default on a GPU: {codec.OURS.steps} for ours, "
    f"{codec.PAPER.steps} for the paper's settings; {CPU_STEPS[0]} on a CPU).")
_FINETUNE_STEPS = flags.DEFINE_integer(
    "finetune_steps", None,
    f"Quantization-aware steps (default on a GPU: {codec.OURS.finetune_steps} for ours, "
    f"{codec.PAPER.finetune_steps} for the paper's; {CPU_STEPS[1]} on a CPU).")
_SETTINGS = flags.DEFINE_enum(
    "settings", "ours", ["ours", "paper"],
    "ours: gradient init, quarter-pixel grid positions; paper: random init, float16 positions. "
    "The flags below override single settings.")
_INIT = flags.DEFINE_enum("init", None, ["random", "gradient"], "Fitting initialisation.")
_POSITION_STEP = flags.DEFINE_float(
    "position_step", None, "Grid step of the positions in pixels (0: float16, the paper's).")
_STAGES = flags.DEFINE_integer("stages", None, "Colour residual VQ stages (paper: 2).")
_CODEBOOK_SIZE = flags.DEFINE_integer("codebook_size", None, "Codewords per stage (paper: 8).")
_CODEBOOK_SIZES = flags.DEFINE_list(
    "codebook_sizes", None, "Choose the codewords per stage per image from these (each "
    "fine-tuned from the same fit; the file with the best PSNR - rd_slope·log2(bytes) is kept).")
_RD_SLOPE = flags.DEFINE_float(
    "rd_slope", None, "dB per doubling of the file that a larger --codebook_sizes candidate must "
    f"gain to be kept (default {codec.OURS.rd_slope}).")
_COV_BITS = flags.DEFINE_integer("cov_bits", None, "Bits per covariance channel (paper: 6).")
_WIDE_SIGMA = flags.DEFINE_float(
    "wide_sigma", None, "Gaussians whose smaller standard deviation is at least this many pixels "
    "sit on a position grid twice as coarse, where --wide_min_pixels allows (0: off; a multiple "
    f"of 1/8; grid positions only; default: the settings', {codec.OURS.wide.sigma:g} for ours).")
_WIDE_MIN_PIXELS = flags.DEFINE_float(
    "wide_min_pixels", None, "Use --wide_sigma only with at least this many pixels per Gaussian "
    "(H·W/N; 0: at every N; default: the settings', "
    f"{codec.OURS.wide.min_pixels_per_gaussian:g} for ours; docs/codec_experiments.md).")
_COLOR_BITS = flags.DEFINE_integer(
    "color_bits", None, "0: colours by residual VQ (--stages × --codebook_size, the paper's); "
    "1..8: a learned uniform quantizer with this many bits per colour channel.")
_CODEWORD_FRACTION_BITS = flags.DEFINE_integer(
    "codeword_fraction_bits", None, "0: colour codewords as float16 (the paper's); e > 0: in "
    f"fixed point, multiples of 2**-e (ours: {codec.OURS.quantizers.codeword_fraction_bits}).")
_COMMITMENT_WEIGHT = flags.DEFINE_float(
    "commitment_weight", None,
    "Weight of the colour VQ's commitment loss in fine-tuning (paper: 1).")
_PARAMETERIZATION = flags.DEFINE_enum("parameterization", "cholesky", ["cholesky", "rs"],
                                      "Covariance parameterisation.")
_BITS_BACK = flags.DEFINE_bool("bits_back", True, "Bits-back ordering of the Gaussians.")
_REFINE = flags.DEFINE_bool(
    "refine", None, "Refine the colour indices and codewords for the decoder's render after "
    "fine-tuning (default: the settings', on for ours).")
_DENSIFY = flags.DEFINE_bool(
    "densify", None, "Error-guided densification during the fit (DensifySchedule() defaults; "
    "default: the settings').")
_LR_FACTORS = flags.DEFINE_string(
    "lr_factors", None, "The fit's per-group learning-rate factors: "
    "'means,cov,colors[,reference_size[,reference_area]]', 'best' (the best recipe's) or 'none' "
    "(default: the settings').")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer: auto, reference or pallas.")
_PROGRESS = flags.DEFINE_bool("progress", False, "Print fitting and fine-tuning progress (stderr).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Fitting base learning rate (Adan).")
_FINETUNE_LEARNING_RATE = flags.DEFINE_float("finetune_learning_rate", None,
                                             "Fine-tuning base learning rate (fresh Adan).")
_LR_SCHEDULE = flags.DEFINE_enum("lr_schedule", None, list(optim.SCHEDULES),
                                 "Learning-rate schedule of the fit.")
_FINETUNE_LR_SCHEDULE = flags.DEFINE_enum("finetune_lr_schedule", None, list(optim.SCHEDULES),
                                          "Learning-rate schedule of fine-tuning.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 0, "Images encoded at once (vmapped fit and fine-tuning); 0: as many as fit in "
    "GPU memory on a GPU, 1 on a CPU.", lower_bound=0)
_RECODE = flags.DEFINE_bool(
    "recode", False, "Re-entropy-code the files already in --out_dir with this version's encoder "
    "before summarising (lossless: the same symbols and image), so results from an older coder "
    "are comparable. A file is rewritten when that makes it shorter (its rate and bits-back "
    "figures are then measured again); every file's decode is timed again.")
_DECODE_REPEATS = flags.DEFINE_integer("decode_repeats", 5, "Timed decodes per file (median).",
                                        lower_bound=1)
_CLASSIC = flags.DEFINE_bool("classic", True, "Also run JPEG, WebP, JPEG 2000 and AVIF.")
_JPEG_QUALITIES = flags.DEFINE_list("jpeg_qualities", ["5", "10", "20", "30", "50", "70", "90"],
                                    "Pillow JPEG qualities.")
_WEBP_QUALITIES = flags.DEFINE_list("webp_qualities", ["0", "5", "15", "30", "50", "70", "90"],
                                    "Pillow WebP qualities.")
_AVIF_QUALITIES = flags.DEFINE_list("avif_qualities", ["5", "15", "30", "45", "60", "75", "90"],
                                    "Pillow AVIF qualities.")
_JP2_BPP = flags.DEFINE_list("jp2_bpp", ["0.1", "0.2", "0.4", "0.7", "1.0", "1.5", "2.5"],
                             "JPEG 2000 target rates in bpp (compression ratio 24/bpp).")
_CLASSIC_FROM = flags.DEFINE_string(
    "classic_from", None, "Another run's records.json to take the classic codecs' records from "
    "(those of this run's images, crop and settings) instead of encoding them again: they depend "
    "on Pillow alone, so e.g. a GPU run reuses a CPU run's.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/compress", "Where to write results.")

def batch_size(num_images: int, num_gaussians: int, height: int, width: int) -> int:
  """``--batch_size``, where 0 means: as many as fit on a GPU, one at a time on a CPU."""
  if _BATCH_SIZE.value > 0:
    return _BATCH_SIZE.value
  if jax.default_backend() != "gpu":
    return 1
  if jax.process_count() > 1:
    # Each process would measure its own free memory; every process must run the same batches.
    raise errors.InvalidInputError("a run over several processes needs --batch_size > 0")
  return auto_batch_size(num_images, num_gaussians, height, width)


# -- ours ------------------------------------------------------------------------------------------

def parse_lr_factors(value: str) -> recipes.LrFactors | None:
  """``--lr_factors``: ``"none"``, ``"best"``, or three to five numbers (means, cov, colors, then
  the positions' reference size and area), else an InvalidInputError."""
  if value == "none":
    return None
  if value == "best":
    return recipes.BEST.lr_factors
  try:
    numbers = [float(part) for part in value.split(",")]
  except ValueError:
    numbers = []
  if len(numbers) not in (3, 4, 5):
    raise errors.InvalidInputError(
        "--lr_factors takes 'none', 'best' or three numbers means,cov,colors (then, optionally, "
        "the size at which the positions' factor applies and the pixels per Gaussian below which "
        f"positions move slower); got {value!r}")
  return recipes.LrFactors(*numbers)


def codec_settings() -> codec.CodecSettings:
  """``--settings`` with the single-setting flags applied."""
  base = codec.OURS if _SETTINGS.value == "ours" else codec.PAPER
  quantizers = dataclasses.replace(base.quantizers, **{
      name: flag.value for name, flag in (
          ("position_step", _POSITION_STEP), ("stages", _STAGES),
          ("codebook_size", _CODEBOOK_SIZE), ("cov_bits", _COV_BITS),
          ("color_bits", _COLOR_BITS), ("commitment_weight", _COMMITMENT_WEIGHT),
          ("codeword_fraction_bits", _CODEWORD_FRACTION_BITS))
      if flag.value is not None})
  overrides = {name: flag.value for name, flag in (
      ("init", _INIT), ("learning_rate", _LEARNING_RATE),
      ("finetune_learning_rate", _FINETUNE_LEARNING_RATE), ("lr_schedule", _LR_SCHEDULE),
      ("finetune_lr_schedule", _FINETUNE_LR_SCHEDULE), ("rd_slope", _RD_SLOPE),
      ("refine", _REFINE)) if flag.value is not None}
  if _DENSIFY.value is not None:
    overrides["densify"] = DensifySchedule() if _DENSIFY.value else None
  if _LR_FACTORS.value is not None:
    overrides["lr_factors"] = parse_lr_factors(_LR_FACTORS.value)
  if _CODEBOOK_SIZES.value:
    overrides["codebook_sizes"] = tuple(positive_integers(_CODEBOOK_SIZES.value, "codebook_sizes"))
  return dataclasses.replace(base, quantizers=quantizers, parameterization=_PARAMETERIZATION.value,
                             bits_back=_BITS_BACK.value,
                             wide=override_wide(base.wide, _WIDE_SIGMA.value,
                                                      _WIDE_MIN_PIXELS.value), **overrides)


def file_name(image: str, key: dict) -> str:
  """The ``.gimg`` name of one record: image, crop, N, and a hash of every setting in ``key``,
  so runs with different settings in one folder never overwrite each other's files."""
  return (f"{os.path.splitext(image)[0]}_c{key['crop']}_n{key['num_gaussians']}_{_SETTINGS.value}"
          f"_{settings_digest(key)}.gimg")


def encode_group(targets: list[np.ndarray], num_gaussians: int, steps: int, finetune_steps: int,
                 settings: codec.CodecSettings) -> list[codec.EncodedImage]:
  """Encodes same-size images, one at a time or (``len(targets) > 1``) as one vmapped batch."""
  if len(targets) == 1:
    return [codec.encode_image(targets[0], num_gaussians, steps, finetune_steps,
                               settings=settings, seed=_SEED.value, backend=_BACKEND.value,
                               progress=_PROGRESS.value)]
  # Every image gets the same seed, as when encoded on its own.
  return codec.encode_images(targets, num_gaussians, steps, finetune_steps, settings=settings,
                             seeds=[_SEED.value] * len(targets), backend=_BACKEND.value,
                             progress=_PROGRESS.value)


def measure_ours(encoded: codec.EncodedImage, target: np.ndarray, num_gaussians: int,
                 settings: codec.CodecSettings, path: str) -> dict:
  """Write the file to ``path``, decode it from the file's bytes, measure."""
  height, width = target.shape[:2]
  fitted, tuned, data = encoded.fitted, encoded.tuned, encoded.data
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)

  with open(path, "rb") as f:
    data = f.read()
  decoded, info, decode_times = time_decode(data)
  gaussians = info["gaussians"]
  render_seconds = median_seconds(
      lambda: render_decoded(gaussians, height, width, _BACKEND.value),
      repeats=max(_DECODE_REPEATS.value, 10), warmup=1)
  bits_back = bits_back_report(tuned.quantized, height, width,
                                     data if settings.bits_back else None)
  fit_train_psnr = fitted.history[-1]["psnr"] if fitted.history else None
  # The float fit scored like the file (8-bit render), so fit_psnr − psnr is the codec's loss.
  fit_psnr = image_metrics(np.asarray(fitted.render(_BACKEND.value)), target)["psnr"]
  return dict(
      image_metrics(decoded, target), bpp=info["bpp"], bytes=len(data),
      header_bytes=info["header_bytes"], payload_bytes=info["payload_bytes"],
      fixed_length_bpp=(fixed_length_bits(num_gaussians, encoded.quantizers) /
                        (height * width)),
      kept_codebook_size=encoded.quantizers.codebook_size,
      candidates=[c._asdict() for c in encoded.candidates],
      fit_psnr=fit_psnr, fit_train_psnr=fit_train_psnr, quantized_psnr_float=tuned.psnr,
      initial_quantized_psnr=tuned.initial_psnr, best_step=tuned.best_step,
      **refinement_fields(encoded.refinement),
      fit_seconds=fitted.fit_seconds, finetune_seconds=tuned.fit_seconds,
      compile_seconds=fitted.compile_seconds + tuned.compile_seconds,
      encode_seconds=encoded.encode_seconds, entropy_encode_seconds=encoded.entropy_seconds,
      **decode_times, render_seconds=render_seconds,
      render_fps=1.0 / render_seconds,
      bits_back_saved_bits=bits_back["saved_bits"], bits_back_bound_bits=bits_back["bound_bits"],
      bytes_without_bits_back=bits_back["bytes_without"], **rate_fields(data),
      device=str(jax.devices()[0].device_kind), file=os.path.basename(path))


RATE_FIELDS = ("position_bits_per_gaussian", "covariance_bits_per_gaussian",
               "color_bits_per_gaussian", "side_bits_per_gaussian")


def rate_fields(data: bytes) -> dict:
  """A file's bits per Gaussian by part (:func:`gi_jax.codec.rate_breakdown`), as
  :data:`RATE_FIELDS`: positions (their streams less what the bits-back order gave back),
  covariances, colours, and the rest (header, side information, codebooks, entropy models,
  padding, CRC). The four add up to the file."""
  info = codec.rate_breakdown(data)
  coded = lambda *prefixes: sum(s["payload_bits"] for s in info["streams"]
                                if s["name"].startswith(prefixes))
  parts = [coded("x_", "y_") + info["order_bits"], coded("cov"), coded("color")]
  parts.append(8 * info["bytes"] - sum(parts))
  return {k: bits / info["num_gaussians"] for k, bits in zip(RATE_FIELDS, parts)}


def time_decode(data: bytes) -> tuple[np.ndarray, dict, dict]:
  """Decodes a file's bytes; returns the image, the decoder's info and the record's timings."""
  t0 = time.perf_counter()
  decoded, info = codec.decode(data, backend=_BACKEND.value)  # first call: includes compiling
  cold = time.perf_counter() - t0
  parse_seconds = []

  def decode():
    image, warm_info = codec.decode(data, backend=_BACKEND.value)
    parse_seconds.append(warm_info["parse_seconds"])
    return image

  seconds = median_seconds(decode, repeats=_DECODE_REPEATS.value, warmup=0)
  return decoded, info, dict(format_version=info["format_version"], decode_cold_seconds=cold,
                             decode_seconds=seconds,
                             entropy_decode_seconds=float(np.median(parse_seconds)))


def refinement_fields(refinement: RefineResult | None) -> dict:
  """What the colour refinement did (PSNR of the float render before it, its cost)."""
  if refinement is None:
    return {}
  return dict(unrefined_psnr_float=psnr_from_mse(refinement.initial_mse),
              unrefined_bytes=refinement.initial_bytes,
              refine_seconds=refinement.seconds, refine_index_changes=refinement.index_changes,
              refine_codebook_steps=refinement.codebook_steps)


def recode(results: ResultsFile, out_dir: str) -> tuple[int, int]:
  """Re-encodes every file of ours with the current coder, and times every decode again.

  A file is rewritten when the current coder makes it shorter. Every decode is timed again,
  rewritten or not, so that a run's decode times are taken on one machine in one state.

  Returns:
    How many files were rewritten, and how many of those got shorter.
  """
  rewritten = shorter = 0
  for record in results.records:
    if record["codec"] != "ours":
      continue
    path = file_in(os.path.join(out_dir, "files"), record["file"])
    if not os.path.isfile(path):
      continue
    with open(path, "rb") as f:
      old = f.read()
    q, header = decode_quantized(old)
    data = codec.encode(q, header.height, header.width, bits_back=header.bits_back)
    again, new_header = decode_quantized(data)
    if jax.tree.structure(again) != jax.tree.structure(q) or not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(q))):
      raise errors.CodecError(f"{path}: re-encoding changed the symbols")
    rewrite = len(data) < len(old)
    if rewrite:
      with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
          f.write(data)
      report = bits_back_report(q, header.height, header.width,
                                      data if header.bits_back else None)
      record.update(bytes=len(data), bpp=bits_per_pixel(len(data), header.height,
                                                               header.width),
                    header_bytes=new_header.header_bytes, payload_bytes=new_header.payload_bytes,
                    bits_back_saved_bits=report["saved_bits"],
                    bytes_without_bits_back=report["bytes_without"], **rate_fields(data),
                    recoded_from_bytes=record.get("recoded_from_bytes", len(old)))
      rewritten += 1
      shorter += len(data) < len(old)
    record.update(time_decode(data if rewrite else old)[2])
  results.save()
  return rewritten, shorter


# -- classic codecs --------------------------------------------------------------------------------

def classic_settings() -> dict[str, list[tuple[float, dict]]]:
  """Per codec: (rate parameter, Pillow save options), for the codecs this Pillow has.

  Raises:
    errors.InvalidInputError: a quality outside [0, 100] or a JPEG 2000 rate that is not > 0.
  """
  quality = lambda flag: numbers(flag.value, flag.name, int, lambda q: 0 <= q <= 100,
                                 "integers in [0, 100]")
  out = {"JPEG": [(float(q), dict(format="JPEG", quality=q, optimize=True))
                  for q in quality(_JPEG_QUALITIES)]}
  if features.check("webp"):
    out["WebP"] = [(float(q), dict(format="WEBP", quality=q, method=6))
                   for q in quality(_WEBP_QUALITIES)]
  if features.check("jpg_2000"):
    # mct=1: the colour transform (Pillow's default leaves RGB channels uncorrelated, far worse).
    out["JPEG 2000"] = [(b, dict(format="JPEG2000", quality_mode="rates",
                                 quality_layers=[24.0 / b], irreversible=True, mct=1))
                        for b in numbers(_JP2_BPP.value, _JP2_BPP.name, float, lambda b: b > 0,
                                         "rates in bpp > 0")]
  if features.check("avif"):
    out["AVIF"] = [(float(q), dict(format="AVIF", quality=q)) for q in quality(_AVIF_QUALITIES)]
  return out


def reuse_classic(results: ResultsFile, path: str, classic: dict, images, crop: int) -> int:
  """Copies into ``results`` the classic codecs' records of ``path`` that it lacks, for these
  images, crop and settings; returns how many.

  Raises:
    errors.InvalidInputError: ``path`` does not exist or is not a records file.
  """
  if not os.path.isfile(path):
    raise errors.InvalidInputError(f"--classic_from: no records file {path}")
  source = ResultsFile(path, record_fields)
  keys = [dict(codec=codec_name, image=image, crop=crop, setting=setting)
          for image in images for codec_name, rate_settings in classic.items()
          for setting, _ in rate_settings]
  found = [source.find(**key) for key in keys if not results.find(**key)]
  results.records.extend(r for r in found if r is not None)
  results.save()
  return sum(r is not None for r in found)


def run_classic(target: np.ndarray, options: dict) -> dict:
  samples = io.quantize_8bit(target)
  pil = Image.fromarray(np.round(samples * 255).astype(np.uint8), "RGB")
  buffer = pyio.BytesIO()
  t0 = time.perf_counter()
  pil.save(buffer, **options)
  t1 = time.perf_counter()
  data = buffer.getvalue()
  with Image.open(pyio.BytesIO(data)) as im:
    decoded = np.asarray(im.convert("RGB"), np.float32) / np.float32(255)
  t2 = time.perf_counter()
  height, width = target.shape[:2]
  return dict(image_metrics(decoded, target), bpp=8 * len(data) / (height * width),
              bytes=len(data), encode_seconds=t1 - t0, decode_seconds=t2 - t1)


# -- summaries -------------------------------------------------------------------------------------

def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def curve(records: list[dict], key: str) -> list[dict]:
  """Means over images per rate point ``key`` (points missing an image are dropped)."""
  images = {r["image"] for r in records}
  points = []
  for value in sorted({r[key] for r in records}):
    group = [r for r in records if r[key] == value]
    if {r["image"] for r in group} != images:
      continue
    points.append(dict(
        setting=value, images=len(group), bpp=_mean(r["bpp"] for r in group),
        psnr=_mean(r["psnr"] for r in group), ms_ssim=_mean(r["ms_ssim"] for r in group),
        encode_seconds=_mean(r["encode_seconds"] for r in group),
        decode_seconds=_mean(r["decode_seconds"] for r in group),
        extra={k: _mean(r.get(k) for r in group) for k in (
            "render_seconds", "render_fps", "entropy_decode_seconds", "bits_back_saved_bits",
            "bits_back_bound_bits", "fit_psnr", "fit_train_psnr", "quantized_psnr_float",
            "unrefined_psnr_float", "unrefined_bytes", "refine_seconds", "fixed_length_bpp",
            *RATE_FIELDS) if any(k in r for r in group)}))
  points.sort(key=lambda p: p["bpp"])
  return points


def compressai_json(name: str, description: str, points: list[dict]) -> dict:
  """CompressAI's results layout: ``{"name", "description", "results": {metric: [...]}}``."""
  results = {"bpp": [p["bpp"] for p in points], "psnr-rgb": [p["psnr"] for p in points],
             "ms-ssim-rgb": [p["ms_ssim"] for p in points],
             "encoding_time": [p["encode_seconds"] for p in points],
             "decoding_time": [p["decode_seconds"] for p in points]}
  for key in sorted({k for p in points for k in p["extra"]}):
    results[key] = [p["extra"].get(key) for p in points]
  results["setting"] = [p["setting"] for p in points]
  return {"name": name, "description": description, "results": results}


def ms_ssim_db(values):
  return [None if v is None or v >= 1 else -10 * np.log10(1 - v) for v in values]


def bd_rates(ours: dict, others: dict[str, dict]) -> dict:
  """BD-rate (%) of ours against each anchor, on PSNR and on MS-SSIM (dB), and at each of our
  rate points the PSNR gain over the anchor there (``psnr-rgb-gain-db``; None outside its range)."""
  table = {}
  for name, anchor in others.items():
    row = {}
    for metric, transform in (("psnr-rgb", list), ("ms-ssim-rgb", ms_ssim_db)):
      a_q, o_q = transform(anchor["results"].get(metric, [])), transform(ours["results"][metric])
      a = [(r, q) for r, q in zip(anchor["results"]["bpp"], a_q) if q is not None]
      o = [(r, q) for r, q in zip(ours["results"]["bpp"], o_q) if q is not None]
      try:
        row[metric] = codec.bd_rate(*zip(*a), *zip(*o)) if len(a) > 1 and len(o) > 1 else None
      except errors.InvalidInputError as e:
        row[metric] = None
        row[f"{metric}-note"] = str(e)
    rates, psnrs = ours["results"]["bpp"], ours["results"]["psnr-rgb"]
    anchor_psnr = anchor["results"].get("psnr-rgb", [])
    if len(anchor_psnr) > 1:
      row["psnr-rgb-gain-db"] = [
          None if there is None else mine - there for mine, there in
          zip(psnrs, quality_at_rates(anchor["results"]["bpp"], anchor_psnr, rates))]
    table[name] = row
  return table


def plot(path: str, curves: dict[str, dict], title: str) -> None:
  plt = pyplot()
  figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
  for name, data in curves.items():
    res = data["results"]
    ours = name == "ours"
    style = dict(marker="o" if ours else ".", linewidth=2.2 if ours else 1.2,
                 linestyle="--" if name.startswith("GaussianImage (paper") else "-")
    label = data["name"]
    left.plot(res["bpp"], res["psnr-rgb"], label=label, **style)
    ms = ms_ssim_db(res.get("ms-ssim-rgb", []))
    pts = [(b, m) for b, m in zip(res["bpp"], ms) if m is not None]
    if pts:
      right.plot(*zip(*pts), label=label, **style)
  left.set_ylabel("PSNR (dB)")
  right.set_ylabel("MS-SSIM (dB) = −10·log10(1 − MS-SSIM)")
  for axis in (left, right):
    axis.set_xlabel("bpp")
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
      axis.legend(fontsize=7)
    else:
      axis.text(0.5, 0.5, "no points (MS-SSIM needs sides > 160 px)", ha="center",
                transform=axis.transAxes, fontsize=8)
  figure.suptitle(textwrap.fill(title, 150), fontsize=9)
  figure.tight_layout()
  save_figure(figure, path, dpi=110)


# -- main ------------------------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    multihost.initialize()  # before anything asks JAX for its devices
  except errors.GIError as e:
    raise run_failed(e) from None
  writer = multihost.is_writer()  # every process encodes; process 0 measures and writes
  where = "GPU" if jax.default_backend() == "gpu" else "CPU"
  try:
    counts = positive_integers(_NUM_GAUSSIANS.value)
    settings = codec_settings()
    classic = classic_settings() if _CLASSIC.value else {}
  except errors.GIError as e:
    raise app.UsageError(str(e))
  steps, finetune_steps, _ = default_steps(settings, _STEPS.value, _FINETUNE_STEPS.value)
  mine_key = codec_record_key(settings)
  print(f"settings ({where}): counts={counts} scale_by_area={_SCALE_BY_AREA.value} steps={steps} "
        f"finetune_steps={finetune_steps} crop={_CROP.value} {mine_key}", flush=True)
  out_dir = _OUT_DIR.value
  try:
    check_out_dir(out_dir, "records.json", "bd_rate.json", os.path.join("files", "any.gimg"))
    results = ResultsFile(os.path.join(out_dir, "records.json"), record_fields)
    paths = select_images(_DATASET.value, max_images=_MAX_IMAGES.value)
    targets = {os.path.basename(p): centre_crop(io.load_image(p), _CROP.value) for p in paths}
    if _CLASSIC.value and _CLASSIC_FROM.value and writer:
      reused = reuse_classic(results, _CLASSIC_FROM.value, classic, targets, _CROP.value)
      print(f"classic codecs: {reused} records taken from {_CLASSIC_FROM.value}", flush=True)
    for nominal in counts:
      pending = {}
      for name, target in targets.items():
        height, width = target.shape[:2]
        n = scaled_count(nominal, height, width, _SCALE_BY_AREA.value)
        key = dict(codec="ours", image=name, crop=_CROP.value, nominal_gaussians=nominal,
                   num_gaussians=n, steps=steps, finetune_steps=finetune_steps,
                   seed=_SEED.value, **mine_key)
        if not results.find(**key):
          pending.setdefault((height, width, n), []).append((name, key))
      for (height, width, n), items in pending.items():
        size = batch_size(len(items), n, height, width)
        for start in range(0, len(items), size):
          group = items[start:start + size]
          encoded = encode_group([targets[name] for name, _ in group], n, steps, finetune_steps,
                                 settings)
          for (name, key), one in zip(group, encoded if writer else ()):
            stem = file_name(name, key)
            record = dict(key, height=height, width=width, batch_size=len(group),
                          **measure_ours(one, targets[name], n, settings,
                                         os.path.join(out_dir, "files", stem)))
            results.add(record)
            print(f"{name} N={n}: {record['bpp']:.4f} bpp  PSNR {record['psnr']:.2f} dB  "
                  f"encode {record['encode_seconds']:.1f} s  decode "
                  f"{record['decode_seconds']:.3f} s (render {record['render_seconds'] * 1e3:.2f} "
                  f"ms)  bits-back saved {record['bits_back_saved_bits']} of "
                  f"{record['bits_back_bound_bits']:.0f} bits", flush=True)
    if _CLASSIC.value and writer:
      for name, target in targets.items():
        height, width = target.shape[:2]
        for codec_name, rate_settings in classic.items():
          for setting, options in rate_settings:
            key = dict(codec=codec_name, image=name, crop=_CROP.value, setting=setting)
            if not results.find(**key):
              results.add(dict(key, height=height, width=width, **run_classic(target, options)))
    if _RECODE.value and writer:
      rewritten, shorter = recode(results, out_dir)
      print(f"recoded: {rewritten} files rewritten, {shorter} of them shorter", flush=True)
  except errors.GIError as e:
    raise run_failed(e) from None
  if not writer:
    return

  # The summary is of this run's images: the records file may hold others from earlier runs.
  records = [r for r in results.records if r.get("crop") == _CROP.value and r["image"] in targets]
  mine = [r for r in records if results.matches(
      r, codec="ours", steps=steps, finetune_steps=finetune_steps, seed=_SEED.value, **mine_key)
          and r["nominal_gaussians"] in counts]
  report_other_code(mine, "this run's encodes")
  q = settings.quantizers
  sizes = ("{" + ",".join(map(str, settings.codebook_sizes)) + "} per image"
           if settings.codebook_sizes else q.codebook_size)
  colors = (f"uniform {q.color_bits} bits" if q.color_bits else
            f"{q.stages}×{sizes} (commitment {q.commitment_weight:g}, codewords "
            f"{f'2^-{q.codeword_fraction_bits}' if q.codeword_fraction_bits else 'float16'})")
  wide = settings.wide_positions
  wide = (f" (σ ≥ {wide.sigma:g} px: twice as coarse, from {wide.min_pixels_per_gaussian:g} px "
          "per Gaussian)" if wide else "")
  describe = (f"{len(paths)} image(s), crop {_CROP.value or 'none'}, {settings.init} init, "
              f"steps {steps} (lr {settings.learning_rate:g}, {settings.lr_schedule}) + "
              f"{finetune_steps} fine-tuning (lr {settings.finetune_learning_rate:g}, "
              f"{settings.finetune_lr_schedule}), positions "
              f"{f'grid {q.position_step:g} px{wide}' if q.position_step else 'float16'}, colours "
              f"{colors}, covariance {q.cov_bits} bits, "
              f"{settings.parameterization}, bits-back {settings.bits_back}, "
              f"colour refinement {settings.refine}, "
              f"{jax.devices()[0].device_kind}")
  points = curve(mine, "nominal_gaussians")
  curves = {"ours": compressai_json(
      f"GaussianImage-JAX ({_SETTINGS.value}, {settings.parameterization})", describe, points)}
  write_json(os.path.join(out_dir, "gaussianimage.json"), curves["ours"])
  for codec_name in classic:
    points = curve([r for r in records if r["codec"] == codec_name], "setting")
    if points:
      curves[codec_name] = compressai_json(f"{codec_name} (Pillow)", describe, points)
      write_json(os.path.join(out_dir, codec_name.lower().replace(" ", "") + ".json"),
                 curves[codec_name])
  # The paper's points are means over the 24 full-size Kodak images: against anything else the
  # difference would be the images', not the codecs'.
  not_kodak = why_not_full_kodak({name: t.shape[:2] for name, t in targets.items()})
  paper_comparison = ("made: the run is the 24 full-size Kodak images" if not_kodak is None else
                      f"not made: {not_kodak}; the paper's points are means over the 24 "
                      "full-size (768×512) Kodak images")
  if not_kodak is None:
    curves[PAPER_CURVE] = {
        "name": "GaussianImage (paper, Kodak, 768×512)", "description": "published",
        "results": {"bpp": PUBLISHED_KODAK[0], "psnr-rgb": PUBLISHED_KODAK[1]}}
  anchors = {k: v for k, v in curves.items() if k != "ours"}
  table = bd_rates(curves["ours"], anchors)
  write_json(os.path.join(out_dir, "bd_rate.json"),
             {"test": curves["ours"]["name"], "description": describe, "anchors": table,
              "note": "BD-rate (%) of ours against each anchor; negative: ours needs fewer bits. "
                      "psnr-rgb-gain-db: at each of our points, our PSNR minus the anchor's at "
                      "that bpp",
              "paper_comparison": paper_comparison})
  plot(os.path.join(out_dir, "rd.png"), curves, f"Rate–distortion: {describe}")

  print("\nours (means over images):")
  res = curves["ours"]["results"]
  for i, bpp in enumerate(res["bpp"]):
    ms = res["ms-ssim-rgb"][i]
    print(f"  N={res['setting'][i]:>6}  {bpp:.4f} bpp  PSNR {res['psnr-rgb'][i]:.2f} dB  "
          f"MS-SSIM {'-' if ms is None else f'{ms:.4f}'}  encode {res['encoding_time'][i]:.1f} s  "
          f"decode {res['decoding_time'][i]:.3f} s")
    parts = [res[k][i] if k in res else None for k in RATE_FIELDS]
    if None not in parts:
      print("           bits per Gaussian: positions {:.1f}, covariances {:.1f}, colours {:.1f}, "
            "header and models {:.1f}".format(*parts))
  print("\nBD-rate of ours against (PSNR, MS-SSIM):")
  for name, row in table.items():
    fmt = lambda v: "-" if v is None else f"{v:+.1f}%"
    print(f"  {name:32s} {fmt(row.get('psnr-rgb'))}  {fmt(row.get('ms-ssim-rgb'))}")
  print(f"PSNR of ours minus each anchor's at our rates (N = "
        f"{', '.join(str(n) for n in res['setting'])}):")
  for name, row in table.items():
    gains = ("-" if g is None else f"{g:+.2f}" for g in row.get("psnr-rgb-gain-db", []))
    print(f"  {name:32s} {' '.join(gains)} dB")
  if not_kodak is not None:
    print(f"{PAPER_CURVE}: {paper_comparison}")
  print(f"wrote {out_dir}/rd.png, bd_rate.json, gaussianimage.json, records.json; decode "
        f"throughput: python experiments/decode_speed.py --files={out_dir}/files")


if __name__ == "__main__":
  app.run(main)
