"""experiments/figures.py and the figure a fit ends with (in-process, tiny images)."""

import json
import os

import jax
import numpy as np
from PIL import Image

import gi_jax
from gi_jax.io import sample_image_path
import figures
import harness

PNG = b"\x89PNG"


def test_fit_figure_draws_a_subset_of_many_gaussians(tmp_path):
  target = np.random.default_rng(0).random((24, 40, 3)).astype(np.float32)
  g = gi_jax.init_gaussians(jax.random.key(0), 500, 24, 40)
  history = [dict(step=10 * i, psnr=20.0 + i, seconds=0.1 * i) for i in range(1, 5)]
  path = tmp_path / "figure.png"
  figures.fit_figure(str(path), target, np.clip(target + 0.05, 0, 1), g, history, "test",
                     max_ellipses=100)
  assert path.read_bytes()[:4] == PNG
  assert sorted(os.listdir(tmp_path)) == ["figure.png"]  # no temporary file left
  figures.fit_figure(str(path), target, target, g, [], "no history, exact render")


def test_a_fit_ends_with_its_figure_and_a_lone_count_draws_no_sweep(tmp_path):
  image = tmp_path / "tiny.png"
  Image.open(sample_image_path()).convert("RGB").crop((300, 200, 340, 232)).save(image)
  out = tmp_path / "out"
  results = harness.ResultsFile(str(out / "results.json"), harness.FIT_RECORD_FIELDS)
  record = harness.fit_and_record(results, str(image), 40, 20, out_dir=str(out), init="gradient",
                                  learning_rate=0.03, lr_schedule="cosine", figure=True)
  assert (out / record["figure"]).read_bytes()[:4] == PNG
  assert record["figure"] == record["render"].replace(".png", "_figure.png")
  json_path, png_path = harness.write_summary(str(out), harness.summarize([record]), plot=False)
  assert png_path is None and not (out / "summary.png").exists()
  assert json.loads(open(json_path).read())["rows"][0]["num_gaussians"] == 40
  _, png_path = harness.write_summary(str(out), harness.summarize([record]))
  assert open(png_path, "rb").read()[:4] == PNG
