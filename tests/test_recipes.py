"""Named fitting recipes (gi_jax.recipes): PAPER is fit's protocol to the bit, BEST's per-group
factors are applied, explicit arguments override a recipe's fields, and the fit CLI's --recipe."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gi_jax
from gi_jax import errors, optim, recipes
from gi_jax.raster_alpha import AlphaGaussians
from tests.experiments.runner import run_experiment

SIZE, N, STEPS = 32, 60, 12
FAST = dict(backend="reference", progress=False, steps_per_call=STEPS // 2)


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  smooth = np.stack([x, y, 0.5 * (x + y)], axis=-1)
  return np.clip(smooth + 0.05 * rng.standard_normal(smooth.shape), 0, 1).astype(np.float32)


def leaves(result):
  return [np.asarray(a) for a in jax.tree.leaves(result.gaussians)]


def assert_same(a, b):
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_paper_is_fits_old_default_bit_for_bit(image):
  # What fit ran before recipes existed: random init, Adan with the paper's step schedule.
  old = gi_jax.fit(image, N, STEPS, init="random", optimizer=optim.adan(optim.paper_schedule(1e-3)),
                   **FAST)
  assert_same(gi_jax.fit(image, N, STEPS, **FAST), old)
  assert_same(gi_jax.fit(image, N, STEPS, recipe="paper", **FAST), old)
  assert_same(gi_jax.fit(image, N, STEPS, recipe=recipes.PAPER, **FAST), old)


def test_explicit_arguments_override_the_recipe(image):
  # BEST without its factors is exactly the settings passed one by one.
  plain = gi_jax.fit(image, N, STEPS, init="gradient", learning_rate=0.03,
                     lr_schedule="hold_cosine", **FAST)
  assert_same(gi_jax.fit(image, N, STEPS, recipe=recipes.BEST.replace(
      lr_factors=None, adan_betas=optim.ADAN_BETAS), **FAST), plain)
  # The paper's arguments given explicitly turn BEST back into PAPER but for its factors.
  resolved = recipes.resolve("best", init="random", learning_rate=1e-3, lr_schedule="paper")
  assert resolved.lr_factors == recipes.BEST.lr_factors
  assert (resolved.init, resolved.learning_rate, resolved.lr_schedule) == ("random", 1e-3, "paper")
  assert recipes.resolve("best") is recipes.BEST


def test_best_applies_its_group_factors(image):
  best = gi_jax.fit(image, N, STEPS, recipe="best", **FAST)
  height, width = image.shape[:2]
  # 17 pixels a Gaussian: denser than 10,000 at 768×512, so positions move slower by the spacing.
  means = 0.5 * math.sqrt(height * width / N / (768 * 512 / 10_000))
  by_hand = optax.chain(optim.adan(optim.make_schedule("hold_cosine", 0.03, STEPS), 0.9, 0.99),
                        optim.scale_by_group(dict(means_raw=(means * 256 / width,
                                                             means * 256 / height),
                                                  cov_raw=4.0, colors=0.5)))
  assert_same(gi_jax.fit(image, N, STEPS, init="gradient", optimizer=by_hand, **FAST), best)
  for variant in (dict(lr_factors=None), dict(adan_betas=optim.ADAN_BETAS)):
    other = gi_jax.fit(image, N, STEPS, recipe=recipes.BEST.replace(**variant), **FAST)
    assert not np.array_equal(leaves(best)[1], leaves(other)[1])
  # fit_batch of one image is fit, recipe and all.
  [batched] = gi_jax.fit_batch([image], N, STEPS, seeds=[0], recipe="best", **FAST)
  assert_same(batched, best)


def test_recipes_with_equal_optimizer_keys_build_the_same_update_step():
  # Fits share a compiled step by Recipe.optimizer_key, written by hand beside Recipe.optimizer:
  # equal keys must trace to the same update, whatever the rate and run length.
  params = gi_jax.init_gaussians(jax.random.key(0), 8, 16, 16)
  traced = {}
  for rate in (1e-3, 3e-2):
    for schedule in ("paper", "cosine", "hold_cosine"):
      for factors in (None, recipes.LrFactors(0.5, 4.0, 0.5), recipes.LrFactors(1.0, 2.0, 1.0),
                      recipes.LrFactors(0.5, 4.0, 0.5, reference_size=256),
                      recipes.LrFactors(0.5, 4.0, 0.5, reference_size=256, reference_area=40)):
        for betas in (optim.ADAN_BETAS, (0.9, 0.99, 0.99)):
          recipe = recipes.Recipe(learning_rate=rate, lr_schedule=schedule, lr_factors=factors,
                                  adan_betas=betas)
          for steps, fit in ((100, (16, 16, 8)), (5000, (16, 16, 8)), (100, (512, 768, 8)),
                           (100, (16, 16, 2))):
            optimizer, _ = recipe.optimizer(steps, *fit)
            jaxpr = jax.make_jaxpr(optimizer.update)(params, optimizer.init(params), params)
            traced.setdefault(recipe.optimizer_key(*fit), set()).add(str(jaxpr))
  # Two sets of betas times three schedules, each with no factors, two factors at any size, a
  # reference size's at two sizes, and a reference area's one slower fit (16×16 with N = 8, 32 px
  # a Gaussian; its other fits share the reference size's keys, and so their updates).
  assert len(traced) == 36 and all(len(updates) == 1 for updates in traced.values())


def test_scale_by_group_scales_named_fields_at_any_depth():
  g = gi_jax.Gaussians(jnp.ones((4, 2)), jnp.ones((4, 3)), jnp.ones((4, 3)))
  model = AlphaGaussians(g, jnp.ones((4,)))
  transform = optim.scale_by_group(dict(means_raw=0.5, cov_raw=4.0))
  scaled, _ = transform.update(model, transform.init(model))
  assert float(scaled.gaussians.means_raw[0, 0]) == 0.5
  assert float(scaled.gaussians.cov_raw[0, 0]) == 4.0
  assert float(scaled.gaussians.colors[0, 0]) == 1.0
  assert float(scaled.opacity_raw[0]) == 1.0
  # Per axis of the positions; a reference size sets them from the fit's size.
  transform = optim.scale_by_group(dict(means_raw=(0.25, 0.5)))
  scaled, _ = transform.update(model, transform.init(model))
  assert scaled.gaussians.means_raw[0].tolist() == [0.25, 0.5]
  factors = recipes.LrFactors(0.5, 4.0, 0.5, reference_size=256)
  assert factors.by_field(512, 768, 10_000)["means_raw"] == (0.5 / 3, 0.25)
  assert factors.by_field(256, 256, 10**6)["means_raw"] == (0.5, 0.5)
  assert recipes.LrFactors(0.5, 4.0, 0.5).by_field(512, 768, 10)["means_raw"] == 0.5
  # A reference area slows denser fits by the Gaussians' spacing, and no sparser one speeds up.
  assert recipes.BEST.lr_factors.by_field(512, 768, 10_000)["means_raw"] == (0.5 / 3, 0.25)
  assert recipes.BEST.lr_factors.by_field(512, 768, 800)["means_raw"] == (0.5 / 3, 0.25)
  assert recipes.BEST.lr_factors.by_field(512, 768, 40_000)["means_raw"] == pytest.approx(
      (0.25 / 3, 0.125))
  assert recipes.LrFactors(reference_area=16).by_field(4, 4, 4)["means_raw"] == 0.5


@pytest.mark.parametrize("bad", [
    dict(recipe="fastest"), dict(recipe=3), dict(recipe="best", lr_schedule="linear"),
    dict(recipe="best", init="sobol"), dict(recipe="best", learning_rate=float("nan")),
])
def test_bad_recipes_fail_before_fitting(image, bad):
  with pytest.raises(errors.InvalidInputError):
    gi_jax.fit(image, N, 10**9, **bad, **FAST)
  with pytest.raises(errors.InvalidInputError):
    gi_jax.fit_dataset([image], N, 10**9, progress=False, **bad)


def test_recipe_fields_are_checked():
  with pytest.raises(errors.InvalidInputError):
    recipes.LrFactors(means=0.0)
  with pytest.raises(errors.InvalidInputError):
    recipes.Recipe(clip_gradient="soft")
  with pytest.raises(errors.InvalidInputError):
    recipes.LrFactors(reference_size=-256)
  with pytest.raises(errors.InvalidInputError):
    recipes.LrFactors(reference_area=0)
  with pytest.raises(errors.InvalidInputError):
    recipes.Recipe(lr_factors=(0.5, 4.0, 0.5))
  for betas in ((0.9, 0.99), (0.9, 1.0, 0.99), (-0.1, 0.9, 0.9), "abc", None):
    with pytest.raises(errors.InvalidInputError, match="adan_betas"):
      recipes.Recipe(adan_betas=betas)
  assert recipes.Recipe(adan_betas=[0.9, 0.99, 0.99]).adan_betas == (0.9, 0.99, 0.99)


def test_fit_cli_defaults_to_best_and_takes_paper(tmp_path, image):
  from gi_jax import io
  path = tmp_path / "tiny.png"
  io.save_image(str(path), image)
  common = [f"--image={path}", "--num_gaussians=40", "--steps=4", f"--out_dir={tmp_path / 'out'}",
            "--nofigures", "--backend=reference", "--compilation_cache="]
  for extra in ([], ["--recipe=paper", "--learning_rate=0.01"]):
    proc = run_experiment("fit.py", *common, *extra)
    assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "out" / "results.json") as f:
    records = json.load(f)["records"]
  got = sorted((r["recipe"], r["init"], r["learning_rate"], r["lr_schedule"],
                r.get("lr_factors"), r.get("adan_betas")) for r in records)
  assert got == sorted([("best", "gradient", 0.03, "hold_cosine", [0.5, 4.0, 0.5, 256.0, 39.3216],
                         [0.9, 0.99, 0.99]),
                        ("paper", "random", 0.01, "paper", None, None)])


def test_codec_fits_with_its_settings_recipe():
  from gi_jax import codec
  from harness import codec_record_key
  ours = codec.OURS.fit_recipe  # the best recipe's fit, its positions' factor at any size, density
  best = recipes.BEST
  assert (ours.init, ours.learning_rate, ours.lr_schedule, ours.densify) == (
      best.init, best.learning_rate, best.lr_schedule, best.densify)
  assert ours.lr_factors == dataclasses.replace(best.lr_factors, reference_size=None,
                                                reference_area=None)
  assert codec_record_key(codec.OURS)["lr_factors"] == [0.5, 4.0, 0.5]
  assert codec.PAPER.fit_recipe.lr_factors is None
  unfactored = codec.CodecSettings(lr_factors=None)
  assert unfactored.fit_recipe.lr_factors is None
  assert "lr_factors" not in codec_record_key(unfactored)
  with pytest.raises(errors.InvalidInputError):
    codec.CodecSettings(init="sobol")


def test_quality_compares_recipes_at_equal_time(tmp_path, image):
  from gi_jax import io
  folder = tmp_path / "images"
  folder.mkdir()
  io.save_image(str(folder / "tiny.png"), image)
  out = tmp_path / "out"
  proc = run_experiment(
      "quality.py", f"--dataset={folder}", "--num_gaussians=30", "--steps=4",
      "--steps_for=paper:6", "--recipes=paper,best", "--steps_per_call=2",
      "--backend=reference", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  with open(out / "quality_summary.json") as f:
    summary = json.load(f)
  assert sorted((r["mode"], r["steps"]) for r in summary["records"]) == [("best", 4),
                                                                        ("paper", 6)]
  common = min(r["fit_seconds"] for r in summary["records"])
  for record in summary["records"]:
    assert record["common_seconds"] == common
    assert record["recipe"] == recipes.named(record["mode"]).describe()
  assert {c["mode"] for c in summary["curves"]} == {"paper", "best"}
  assert all(len(c["seconds"]) == len(c["psnr"]) >= 2 for c in summary["curves"])
  assert (out / "quality.png").exists()


@pytest.mark.parametrize("value", ["1,2", "a,b,c", "1,0,1", "1,1,1,0", "1,1,1,1,0",
                                   "1,1,1,1,1,1"])
def test_compress_refuses_bad_lr_factors_before_work(tmp_path, value):
  proc = run_experiment("compress.py", f"--lr_factors={value}", f"--out_dir={tmp_path / 'out'}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  message = proc.stderr.strip().splitlines()[-1]  # after the flags' help, as compress.py's others
  assert "lrfactors" in message.lower().replace("_", "")
  assert not (tmp_path / "out").exists()
