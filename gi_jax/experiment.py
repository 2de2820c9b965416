"""What the experiment CLIs share: settings, image discovery, the results file and the fit record."""

from __future__ import annotations

import json
import os
import time
from importlib import resources

import jax
import numpy as np

from gi_jax import errors, io, metrics
from gi_jax.fitting import fit
from gi_jax.render import render
from gi_jax.storage import atomic_path, save_gaussians
from gi_jax.timing import median_seconds

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PAPER_SETTINGS = ([70_000], 50_000)
CPU_SETTINGS = ([10_000], 1_000)


def sample_image_path() -> str:
  """The bundled sample image (Kodak kodim23, 768×512)."""
  return str(resources.files("gi_jax") / "data" / "kodim23.png")


def paper_or_cpu_settings(counts: list[int] | None, steps: int | None):
  """Fills unset Gaussian counts and steps: the paper's on a GPU, quick ones on a CPU.

  Returns:
    ``(counts, steps, label)`` where ``label`` says which settings run.
  """
  on_gpu = jax.default_backend() == "gpu"
  default_counts, default_steps = PAPER_SETTINGS if on_gpu else CPU_SETTINGS
  where = "GPU: paper settings" if on_gpu else (
      "CPU: quick settings (the paper's are --num_gaussians=70000 --steps=50000)")
  counts = counts or default_counts
  steps = default_steps if steps is None else steps
  for n in counts:
    if n < 1:
      raise errors.InvalidInputError(f"--num_gaussians must be >= 1, got {n}")
  if steps < 0:
    raise errors.InvalidInputError(f"--steps must be >= 0, got {steps}")
  return counts, steps, f"{where}; num_gaussians={counts} steps={steps}"


def find_images(folder: str) -> list[str]:
  """Image files (PNG, JPEG) directly in ``folder``, sorted by name."""
  if not os.path.isdir(folder):
    raise errors.ImageFileError(f"{folder}: no such folder")
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(IMAGE_SUFFIXES))
  if not paths:
    raise errors.ImageFileError(f"{folder}: no PNG or JPEG images in it")
  return paths


class ResultsFile:
  """``results.json``: ``{"records": [...]}``, rewritten atomically after every record."""

  def __init__(self, path: str):
    self.path = path
    self.records: list[dict] = []
    if os.path.exists(path):
      try:
        with open(path) as f:
          self.records = json.load(f)["records"]
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise errors.InvalidInputError(
            f"{path}: unreadable results file ({e}); move it away to start afresh") from None

  def find(self, **key) -> dict | None:
    for record in self.records:
      if all(record.get(k) == v for k, v in key.items()):
        return record
    return None

  def add(self, record: dict) -> None:
    self.records.append(record)
    with atomic_path(self.path) as tmp:
      with open(tmp, "w") as f:
        json.dump({"records": self.records}, f, indent=1)


def output_stem(image_path: str, num_gaussians: int) -> str:
  return f"{os.path.splitext(os.path.basename(image_path))[0]}_n{num_gaussians}"


def image_metrics(rendered: np.ndarray, target: np.ndarray) -> dict:
  """PSNR and MS-SSIM of a rendered image as an 8-bit PNG of it would hold it."""
  on_disk = io.quantize_8bit(rendered)
  record = {"psnr": float(metrics.psnr(on_disk, target))}
  try:
    record["ms_ssim"] = float(metrics.ms_ssim(on_disk, target))
  except errors.InvalidInputError:
    record["ms_ssim"] = None  # smaller than MS-SSIM's five scales allow
  return record


def measure_render_fps(gaussians, height: int, width: int, backend: str) -> float:
  render_jit = jax.jit(lambda g: render(g, height, width, backend))
  return 1.0 / median_seconds(lambda: render_jit(gaussians), repeats=20, min_seconds=0.5)


def fit_and_record(results: ResultsFile, image_path: str, num_gaussians: int, steps: int, *,
                   out_dir: str, parameterization: str = "cholesky", seed: int = 0,
                   backend: str = "auto", learning_rate: float = 1e-3) -> dict:
  """Fits one image, writes its render and Gaussians, and appends its record to ``results``.

  A record already in ``results`` for the same image and settings is returned as it is.
  """
  key = dict(image=os.path.basename(image_path), num_gaussians=num_gaussians, steps=steps,
             parameterization=parameterization, seed=seed)
  done = results.find(**key)
  if done is not None:
    print(f"{key['image']} N={num_gaussians}: done already, skipped", flush=True)
    return done
  target = io.load_image(image_path)
  height, width = target.shape[:2]
  print(f"{key['image']} ({width}×{height}) N={num_gaussians} steps={steps}", flush=True)
  t0 = time.perf_counter()
  result = fit(target, num_gaussians, steps, seed=seed, parameterization=parameterization,
               backend=backend, learning_rate=learning_rate)
  wall = time.perf_counter() - t0
  rendered = np.asarray(result.render(backend))
  stem = output_stem(image_path, num_gaussians)
  png, npz = os.path.join(out_dir, stem + ".png"), os.path.join(out_dir, stem + ".npz")
  io.save_image(png, rendered)
  save_gaussians(npz, result.gaussians, height, width)
  record = dict(key, height=height, width=width, backend=backend, **image_metrics(rendered, target),
                fit_seconds=result.fit_seconds, compile_seconds=result.compile_seconds,
                wall_seconds=wall,
                render_fps=measure_render_fps(result.gaussians, height, width, backend),
                parameters=8 * num_gaussians, device=str(jax.devices()[0].device_kind),
                render=os.path.basename(png), gaussians=os.path.basename(npz))
  results.add(record)
  return record


def print_table(records: list[dict]) -> None:
  """A plain-text summary table of fit records."""
  columns = [("image", "{}"), ("num_gaussians", "{}"), ("steps", "{}"), ("psnr", "{:.2f}"),
             ("ms_ssim", "{:.4f}"), ("fit_seconds", "{:.1f}"), ("render_fps", "{:.0f}")]
  rows = [[name for name, _ in columns]]
  for r in records:
    rows.append([fmt.format(r[name]) if r.get(name) is not None else "-" for name, fmt in columns])
  widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
  for row in rows:
    print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
