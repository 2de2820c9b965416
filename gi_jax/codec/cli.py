"""Command-line codec: ``gi-encode IMAGE OUT.gimg`` and ``gi-decode IN.gimg OUT.png``
(``gi-decode *.gimg --out_dir DIR`` for many files, in batches; ``gi-decode --info *.gimg`` says
where each file's bits go).

``gi-encode`` fits Gaussians to the image, fine-tunes them through the quantizers and writes the
entropy-coded file (:func:`~gi_jax.codec.pipeline.encode_image`; ``--paper`` for the paper's
random init and float16 positions; ``--bpp`` instead of ``--num_gaussians`` picks N for a target
rate by :func:`~gi_jax.codec.rate.rate_model`); ``gi-decode`` renders a file back to a PNG (or
JPEG) from its bytes alone.
Without a GPU the step counts default to quick CPU settings (the run says so); on a GPU to the
settings' own (10,000 + 5,000 steps; with ``--paper`` the paper's 50,000 + 50,000).

Also runnable as ``python -m gi_jax.codec.cli encode|decode ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

from gi_jax import errors, io
from gi_jax.codec.decoder import check_pixels, decode, decode_batches, decoder_pool
from gi_jax.codec.format import rate_breakdown, read_header
from gi_jax.codec.pipeline import (CPU_STEPS, OURS, PAPER, CodecSettings, default_steps,
                                   encode_image, override_wide)
from gi_jax.codec.rate import encode_for_bpp
from gi_jax.storage import atomic_path, check_writable

DEFAULT_GAUSSIANS = 5_000


def _codebook_sizes(text: str) -> tuple[int, ...]:
  values = text.split(",")
  try:
    sizes = tuple(int(v) for v in values)
  except ValueError:
    sizes = ()
  if not sizes or min(sizes) < 1:
    raise argparse.ArgumentTypeError(f"--codebook_sizes must be positive integers, got {values}")
  return sizes


def _encode_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="gi-encode", description="Compress an image (PNG or JPEG) into a GaussianImage file.")
  p.add_argument("image", help="input image")
  p.add_argument("output", help="output file (.gimg)")
  rate_control = p.add_mutually_exclusive_group()
  rate_control.add_argument("--num_gaussians", type=int, default=None,
                            help=f"Gaussians (the rate control; default {DEFAULT_GAUSSIANS})")
  rate_control.add_argument("--bpp", type=float, default=None,
                            help="target bits per pixel instead: N from the default settings' "
                            "rate model (measured on Kodak; files land within about 5%% of the "
                            "target)")
  p.add_argument("--bpp_passes", type=int, default=1, metavar="K",
                 help="with --bpp: encode up to K times, each at the N the last file's size "
                 "calls for, and keep the file closest to the target (default %(default)s; 2 "
                 "halves the miss for twice the time)")
  p.add_argument("--steps", type=int, default=None,
                 help=f"fitting steps (default on a GPU {OURS.steps}, with --paper "
                 f"{PAPER.steps}; {CPU_STEPS[0]} otherwise)")
  p.add_argument("--finetune_steps", type=int, default=None,
                 help=f"quantization-aware steps (default on a GPU {OURS.finetune_steps}, with "
                 f"--paper {PAPER.finetune_steps}; {CPU_STEPS[1]} otherwise)")
  p.add_argument("--paper", action="store_true",
                 help="the paper's codec: random init, float16 positions (default: gradient init, "
                 f"positions on a {OURS.quantizers.position_step:g}-pixel grid)")
  p.add_argument("--parameterization", choices=("cholesky", "rs"), default="cholesky")
  p.add_argument("--learning_rate", type=float, default=None,
                 help="fitting and fine-tuning base learning rate (default: the settings' own)")
  p.add_argument("--codebook_sizes", type=_codebook_sizes, default=(), metavar="K,K,...",
                 help="choose the colour codewords per stage per image from these (e.g. 16,32): "
                      "each is fine-tuned, the best PSNR - rd_slope·log2(bytes) is kept")
  p.add_argument("--rd_slope", type=float, default=OURS.rd_slope,
                 help="dB of PSNR per doubling of the file: what a larger codebook "
                 "(--codebook_sizes) or a colour refinement must gain for the bits it costs")
  p.add_argument("--wide_sigma", type=float, default=None, metavar="PX",
                 help="put the Gaussians whose smaller standard deviation is at least PX pixels "
                 "on a position grid twice as coarse (a multiple of 1/8; 0: off; default "
                 f"{OURS.wide.sigma:g}, with --paper off), where --wide_min_pixels allows")
  p.add_argument("--wide_min_pixels", type=float, default=None, metavar="P",
                 help="use --wide_sigma only with at least P pixels per Gaussian (H*W/N; 0: at "
                 f"every N; default {OURS.wide.min_pixels_per_gaussian:g}: it pays at low rates)")
  p.add_argument("--channels", type=int, choices=(0, 1, 3, 4), default=3,
                 help="colour channels to code: 3 (RGB, the default; RGBA composited on white), 1 "
                      "(grayscale), 4 (RGBA, alpha as a channel) or 0 (what the file has)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_bits_back", action="store_true",
                 help="store the Gaussians in canonical order instead of bits-back ordering")
  p.add_argument("--no_refine", action="store_true",
                 help="keep the fine-tuned colour indices and codewords as they are")
  p.add_argument("--backend", default="auto", help="renderer: auto, reference or pallas")
  p.add_argument("--quiet", action="store_true", help="no progress lines")
  return p


def _decode_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="gi-decode",
                              description="Render a GaussianImage file to an image.")
  p.add_argument("files", nargs="+", metavar="FILE",
                 help="IN.gimg OUT.png (or .jpg); with --out_dir, any number of .gimg files")
  p.add_argument("--out_dir", help="decode every FILE into this folder as NAME.png, in batches")
  p.add_argument("--info", action="store_true",
                 help="print where each FILE's bits go (header, entropy models, each symbol "
                      "stream, bits-back order) instead of rendering it")
  p.add_argument("--workers", type=int, default=0,
                 help="with --out_dir: processes for entropy decoding (default 0: this one)")
  p.add_argument("--batch_files", type=int, default=64,
                 help="with --out_dir: files decoded together (default %(default)s)")
  p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bits per channel")
  p.add_argument("--max_pixels", type=int, default=io.MAX_PIXELS, metavar="P",
                 help="refuse a file whose header claims more than P pixels (height × width), "
                 "before decoding anything (default %(default)s, Pillow's decompression-bomb "
                 "limit; 0: no limit)")
  p.add_argument("--backend", default="auto", help="renderer: auto, reference or pallas")
  p.add_argument("--quiet", action="store_true", help="no summary line")
  return p


def _max_pixels(args) -> int | None:
  if args.max_pixels < 0:
    raise errors.InvalidInputError(f"--max_pixels must be >= 0 (0: no limit), got "
                                   f"{args.max_pixels}")
  return args.max_pixels or None


def _encode_settings(args) -> CodecSettings:
  """The codec settings gi-encode's flags ask for (checked now, before any fitting)."""
  settings = dataclasses.replace(PAPER if args.paper else OURS,
                                 parameterization=args.parameterization,
                                 bits_back=not args.no_bits_back)
  if args.no_refine:
    settings = dataclasses.replace(settings, refine=False)
  if args.learning_rate is not None:
    settings = dataclasses.replace(settings, learning_rate=args.learning_rate,
                                   finetune_learning_rate=args.learning_rate)
  return settings


def encode_main(argv: list[str] | None = None) -> int:
  """``gi-encode``: returns the exit status (0 on success)."""
  parser = _encode_parser()
  args = parser.parse_args(argv)
  try:
    settings = _encode_settings(args)
  except errors.GIError as e:
    print(f"gi-encode: error: {e}", file=sys.stderr)
    return 1
  steps, ft_steps, quick = default_steps(settings, args.steps, args.finetune_steps)
  log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
  if quick:
    log(f"gi-encode: no GPU, quick settings steps={steps} finetune_steps={ft_steps} "
        f"(on a GPU: --steps={settings.steps} --finetune_steps={settings.finetune_steps})")
  try:
    if steps < 0 or ft_steps < 0:
      raise errors.InvalidInputError("--steps and --finetune_steps must be >= 0")
    check_writable(args.output)
    settings = dataclasses.replace(settings, codebook_sizes=args.codebook_sizes,
                                   rd_slope=args.rd_slope,
                                   wide=override_wide(settings.wide, args.wide_sigma,
                                                      args.wide_min_pixels))
    if args.bpp is not None and args.channels != 3:
      raise errors.InvalidInputError(
          "--bpp needs --channels 3: the rate model was fitted to RGB files")
    image = io.load_image(args.image, channels=args.channels or None)
    height, width = image.shape[:2]
    if args.bpp is not None:
      if image.shape[-1] != 3:
        raise errors.InvalidInputError(
            f"--bpp needs an RGB image; {args.image} has {image.shape[-1]} channels")
      encoded = encode_for_bpp(image, args.bpp, steps, ft_steps, passes=args.bpp_passes,
                               settings=settings, seed=args.seed, backend=args.backend,
                               progress=not args.quiet,
                               log=lambda line: log(f"gi-encode: --bpp {args.bpp:g}: {line}")
                               ).encoded
    else:
      if args.bpp_passes != 1:
        raise errors.InvalidInputError("--bpp_passes needs --bpp")
      if args.num_gaussians is None:
        args.num_gaussians = DEFAULT_GAUSSIANS
      encoded = encode_image(image, args.num_gaussians, steps, ft_steps, settings=settings,
                             seed=args.seed, backend=args.backend, progress=not args.quiet)
    data, fitted, tuned = encoded.data, encoded.fitted, encoded.tuned
    with atomic_path(args.output) as tmp:
      with open(tmp, "wb") as f:
        f.write(data)
  except (errors.GIError, OSError) as e:
    print(f"gi-encode: error: {e}", file=sys.stderr)
    return 1
  # With --steps=0 there is no fit to report, only the initialisation fine-tuning started from.
  unquantized = (f"unquantized fit {fitted.history[-1]['psnr']:.2f} dB" if fitted.history
                 else "no fitting steps")
  log(f"gi-encode: {args.output}: {len(data)} bytes, {8 * len(data) / (height * width):.4f} bpp, "
      f"{read_header(data)[0].num_gaussians} Gaussians, PSNR {tuned.psnr:.2f} dB ({unquantized}), "
      f"{encoded.encode_seconds:.1f} s")
  if len(encoded.candidates) > 1:
    log(f"gi-encode: kept {encoded.quantizers.codebook_size} codewords per stage of " + ", ".join(
        f"{c.codebook_size} ({c.num_bytes} bytes, {c.psnr:.2f} dB)" for c in encoded.candidates))
  return 0


def decode_main(argv: list[str] | None = None) -> int:
  """``gi-decode``: returns the exit status (0 on success)."""
  parser = _decode_parser()
  args = parser.parse_args(argv)
  if args.info:
    if args.out_dir is not None:
      parser.error("--info renders nothing; it takes no --out_dir")
    return _print_breakdowns(args.files)
  if args.out_dir is not None:
    return _decode_many(args)
  if len(args.files) != 2:
    parser.error("give IN.gimg OUT.png, or any number of .gimg files with --out_dir")
  args.input, args.output = args.files
  try:
    max_pixels = _max_pixels(args)
    check_writable(args.output)
  except errors.GIError as e:
    print(f"gi-decode: error: {e}", file=sys.stderr)
    return 1
  try:
    with open(args.input, "rb") as f:
      data = f.read()
    image, info = decode(data, backend=args.backend, max_pixels=max_pixels)
  except (errors.GIError, OSError) as e:
    print(f"gi-decode: error: {args.input}: {e}", file=sys.stderr)
    return 1
  try:
    io.save_image(args.output, image, bits=args.bits)
  except (errors.GIError, OSError) as e:  # save_image's messages name the output
    print(f"gi-decode: error: {e}", file=sys.stderr)
    return 1
  if not args.quiet:
    print(f"gi-decode: {args.output}: {info['width']}×{info['height']}, "
          f"{info['num_gaussians']} Gaussians, {info['bpp']:.4f} bpp, "
          f"decode {info['parse_seconds'] + info['render_seconds']:.3f} s", file=sys.stderr)
  return 0


def _decode_many(args: argparse.Namespace) -> int:
  """``gi-decode FILE... --out_dir DIR``: every file to ``DIR/NAME.png``, a batch at a time
  (:func:`~gi_jax.codec.decoder.decode_batches`; each batch's images are written before the next
  renders, so memory holds one batch). Every file's header is checked (``--max_pixels``) before
  any file decodes. All or nothing: images are staged in a hidden folder in ``DIR`` and moved
  into place only once every file has decoded, so a corrupt file anywhere stops the run with its
  name and leaves ``DIR`` as it was (a folder the run created is removed)."""
  outputs = [os.path.join(args.out_dir, os.path.splitext(os.path.basename(f))[0] + ".png")
             for f in args.files]
  try:
    if args.workers < 0 or args.batch_files < 1:
      raise errors.InvalidInputError("--workers must be >= 0 and --batch_files >= 1")
    if len(set(outputs)) < len(outputs):
      raise errors.InvalidInputError("two inputs have the same name: their outputs would clash")
    max_pixels = _max_pixels(args)
    for output in outputs:
      check_writable(output)
    for name in args.files:
      with open(name, "rb") as f:
        check_pixels([f.read()], max_pixels, [name])
  except (errors.GIError, OSError) as e:
    print(f"gi-decode: error: {e}", file=sys.stderr)
    return 1
  t0 = time.perf_counter()
  created = not os.path.isdir(args.out_dir)
  try:
    os.makedirs(args.out_dir, exist_ok=True)
    # Same folder, so moving a staged image into place is a rename, never a copy.
    staging = tempfile.mkdtemp(prefix=".gi-decode-", dir=args.out_dir)
  except OSError as e:
    print(f"gi-decode: error: {e}", file=sys.stderr)
    return 1
  staged = [os.path.join(staging, os.path.basename(o)) for o in outputs]
  try:
    with decoder_pool(args.workers) as executor:
      for start in range(0, len(args.files), args.batch_files):
        names = args.files[start:start + args.batch_files]
        datas = []
        for name in names:
          with open(name, "rb") as f:
            datas.append(f.read())
        for members, images in decode_batches(datas, args.backend, executor=executor,
                                              names=names, max_pixels=max_pixels):
          for i, image in zip(members, images):
            io.save_image(staged[start + i], image, bits=args.bits)
    for path, output in zip(staged, outputs):
      os.replace(path, output)
  except (errors.GIError, OSError) as e:
    print(f"gi-decode: error: {e}", file=sys.stderr)
    return 1
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    if created and not os.listdir(args.out_dir):
      os.rmdir(args.out_dir)
  if not args.quiet:
    print(f"gi-decode: {len(outputs)} files to {args.out_dir} in "
          f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
  return 0


def _print_breakdowns(files: list[str]) -> int:
  """``gi-decode --info FILE...``: each file's :func:`~gi_jax.codec.format.rate_breakdown` as a
  table on stdout; a file that cannot be read is named on stderr and the status is 1."""
  status = 0
  for name in files:
    try:
      with open(name, "rb") as f:
        info = rate_breakdown(f.read())
    except (errors.GIError, OSError) as e:
      print(f"gi-decode: error: {name}: {e}", file=sys.stderr)
      status = 1
      continue
    n, total = info["num_gaussians"], 8 * info["bytes"]
    rows = [("header, side information, codebooks", info["header_bits"]),
            ("entropy models", sum(s["model_bits"] for s in info["streams"]))]
    rows += [(s["name"], s["payload_bits"]) for s in info["streams"]]
    if info["pad_bits"]:
      rows.append(("padding", info["pad_bits"]))
    rows.append((f"order (bits-back; at best {info['order_bound_bits'] / 8:,.1f} bytes)"
                 if info["bits_back"] else "coder overhead (order not bits-back coded)",
                 info["order_bits"]))
    rows.append(("CRC-32", info["crc_bits"]))
    print(f"{name}: {info['width']}×{info['height']}, {n:,} Gaussians, {info['bytes']:,} bytes, "
          f"{info['bpp']:.4f} bpp, format version {info['version']}")
    print(f"  {'part':<44} {'bytes':>10} {'bits/Gaussian':>14} {'share':>7}")
    for label, bits in rows:
      print(f"  {label:<44} {bits / 8:>10,.1f} {bits / n:>14.2f} {bits / total:>7.1%}")
  return status


def encode_entry() -> None:
  sys.exit(encode_main())


def decode_entry() -> None:
  sys.exit(decode_main())


def main(argv: list[str] | None = None) -> int:
  """``python -m gi_jax.codec.cli encode|decode ...``."""
  argv = sys.argv[1:] if argv is None else argv
  commands = {"encode": encode_main, "decode": decode_main}
  if not argv or argv[0] not in commands:
    print(f"usage: {os.path.basename(sys.executable)} -m gi_jax.codec.cli encode|decode ...",
          file=sys.stderr)
    return 2
  return commands[argv[0]](argv[1:])


if __name__ == "__main__":
  sys.exit(main())
