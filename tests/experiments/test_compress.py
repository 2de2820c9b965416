"""experiments/compress.py: the Kodak RD protocol's run on tiny images, in this process (its one
run as a process of its own is test_compress_keeps_to_its_folder_and_to_comparisons_that_apply).
"""

import json

import pytest

from gi_jax import codec, io
from gi_jax.codec.format import VERSION
from gi_jax.codec import format as fmt
from gi_jax.io import sample_image_path
from tests.experiments.runner import run_experiment, run_process

H = W = 32


@pytest.fixture(scope="module")
def target():
  image = io.load_image(sample_image_path())
  return image[200:200 + H, 300:300 + W]


@pytest.mark.parametrize("flag,message", [
    ("--jpeg_qualities=20,500", "--jpeg_qualities must be integers in [0, 100]"),
    ("--jp2_bpp=0", "--jp2_bpp must be rates in bpp > 0"),
    ("--decode_repeats=0", "flag --decode_repeats=0"),
    ("--classic_from=/nonexistent/records.json", "--classic_from: no records file"),
])
def test_compress_experiment_refuses_bad_flags_before_any_work(tmp_path, flag, message):
  out = tmp_path / "rd"
  done = run_experiment("compress.py", "--crop=32", "--num_gaussians=10", "--steps=1",
                        "--finetune_steps=1", flag, f"--out_dir={out}")
  assert done.returncode != 0
  assert message in done.stderr and "Traceback" not in done.stderr
  assert not out.exists()


def test_compress_experiment_writes_compressai_json(tmp_path, target):
  out = tmp_path / "rd"
  dataset = tmp_path / "images"
  dataset.mkdir()
  io.save_image(str(dataset / "a.png"), target)
  io.save_image(str(dataset / "b.png"), target[::-1])
  # Another shape (as Kodak mixes landscape and portrait): encoded and rendered in its own batch.
  io.save_image(str(dataset / "c.png"), target[:, :24])
  cmd = [f"--dataset={dataset}", "--batch_size=2",
         "--num_gaussians=30,60",
         "--steps=10", "--finetune_steps=5", "--decode_repeats=1",
         "--jpeg_qualities=20,80",
         "--webp_qualities=20,80", "--avif_qualities=20,80", "--jp2_bpp=0.5,2",
         f"--out_dir={out}"]
  done = run_experiment("compress.py", *cmd)
  assert done.returncode == 0, done.stderr[-2000:]
  ours = json.loads((out / "gaussianimage.json").read_text())
  assert set(ours) >= {"name", "description", "results"}
  assert len(ours["results"]["bpp"]) == len(ours["results"]["psnr-rgb"]) == 2
  jpeg = json.loads((out / "jpeg.json").read_text())
  assert len(jpeg["results"]["bpp"]) == 2
  anchors = json.loads((out / "bd_rate.json").read_text())["anchors"]
  assert len(anchors["JPEG"]["psnr-rgb-gain-db"]) == 2
  assert (out / "rd.png").stat().st_size > 0
  assert len(list((out / "files").glob("*.gimg"))) == 6
  records = json.loads((out / "records.json").read_text())["records"]
  assert sorted(r["batch_size"] for r in records if r["codec"] == "ours") == [1, 1, 2, 2, 2, 2]
  for r in (r for r in records if r["codec"] == "ours"):
    assert r["codeword_fraction_bits"] == 10 and r["densify"] is False
    assert r["finetune_lr_schedule"] == codec.OURS.finetune_lr_schedule
    # The fit's 8-bit PSNR beside the file's: the codec's loss on one footing.
    assert r["fit_psnr"] == pytest.approx(r["fit_train_psnr"], abs=1.0)
    # Where the bits go, in parts that add up to the file.
    parts = [r[k] for k in ("position_bits_per_gaussian", "covariance_bits_per_gaussian",
                            "color_bits_per_gaussian", "side_bits_per_gaussian")]
    assert min(parts) > 0 and sum(parts) == pytest.approx(8 * r["bytes"] / r["num_gaussians"])
  assert all(codec.read_header(f.read_bytes())[0].fixed_point_codebooks
             for f in (out / "files").glob("*.gimg"))
  # Re-running resumes (nothing to encode) and --recode re-codes the files losslessly.
  # Another run takes the classic codecs' records from this one instead of encoding again.
  other = tmp_path / "rd2"
  reuse = run_experiment("compress.py",
                         *[c for c in cmd if not c.startswith(("--out_dir", "--num_gaussians"))],
                         f"--out_dir={other}", "--num_gaussians=30",
                         f"--classic_from={out / 'records.json'}")
  assert reuse.returncode == 0, reuse.stderr[-2000:]
  classic = [r for r in records if r["codec"] != "ours"]
  assert f"classic codecs: {len(classic)} records taken from" in reuse.stdout
  reused = json.loads((other / "records.json").read_text())["records"]
  assert [r for r in reused if r["codec"] != "ours"] == classic
  assert json.loads((other / "bd_rate.json").read_text())["anchors"].keys() == anchors.keys()
  again = run_experiment("compress.py", *cmd, "--recode", "--noclassic")
  assert again.returncode == 0, again.stderr[-2000:]
  assert "recoded: 0 files rewritten" in again.stdout
  timings = ("decode_cold_seconds", "decode_seconds", "entropy_decode_seconds")
  untimed = lambda rs: [{k: v for k, v in r.items() if k not in timings} for r in rs]
  recoded = json.loads((out / "records.json").read_text())["records"]
  assert untimed(recoded) == untimed(records)
  assert all(r["entropy_decode_seconds"] < r["decode_seconds"]
             for r in recoded if r["codec"] == "ours")
  assert all(r["format_version"] == VERSION for r in recoded if r["codec"] == "ours")
  records = recoded  # as the runs below find them (their decodes timed again)
  # A per-image codebook choice is a configuration of its own, beside the earlier files (16 is
  # the default size: its fine-tuning programs are the first run's, compiled once).
  choose = run_experiment("compress.py", *cmd, "--noclassic", "--num_gaussians=30",
                          "--codebook_sizes=4,16")
  assert choose.returncode == 0, choose.stderr[-2000:]
  chosen = [r for r in json.loads((out / "records.json").read_text())["records"]
            if r not in records]
  assert len(chosen) == 3 and len(list((out / "files").glob("*.gimg"))) == 9
  for r in chosen:
    assert r["codebook_sizes"] == [4, 16] and r["kept_codebook_size"] in (4, 16)
    assert [c["codebook_size"] for c in r["candidates"]] == [4, 16]
  # It resumes too, and a run without the choice still counts only its own records.
  for extra in (["--codebook_sizes=4,16"], []):
    again = run_experiment("compress.py", *cmd, "--noclassic", "--num_gaussians=30", *extra)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "N=30:" not in again.stdout  # nothing encoded
  assert len(json.loads((out / "records.json").read_text())["records"]) == len(records) + 3
  # The summary covers the images of the run, not every image in the records file.
  one = run_experiment("compress.py", *cmd, "--noclassic", "--max_images=1")
  assert one.returncode == 0, one.stderr[-2000:]
  summary = json.loads((out / "gaussianimage.json").read_text())
  assert summary["description"].startswith("1 image(s)")
  assert summary["results"]["bpp"] == sorted(r["bpp"] for r in records
                                             if r["codec"] == "ours" and r["image"] == "a.png")


def test_compress_keeps_to_its_folder_and_to_comparisons_that_apply(tmp_path, dataset):
  out = tmp_path / "out"
  args = [f"--dataset={dataset}", "--crop=24", "--num_gaussians=10", "--steps=2",
          "--finetune_steps=1", "--noclassic", "--decode_repeats=1", f"--out_dir={out}"]
  done = run_process("compress.py", *args, cwd=tmp_path)  # the one run as a process
  assert done.returncode == 0, done.stderr[-2000:]
  # One cropped image is not the paper's Kodak set: no BD-rate against its points, and why not.
  report = json.loads((out / "bd_rate.json").read_text())
  assert "GaussianImage (paper, Kodak)" not in report["anchors"]
  assert report["paper_comparison"].startswith("not made: 1 of Kodak's 24 images")
  assert "GaussianImage (paper, Kodak): not made: 1 of Kodak's 24 images" in done.stdout

  # A records file naming a file outside --out_dir (an older format version, which --recode
  # would rewrite): refused, and the file outside is left alone.
  records = json.loads((out / "records.json").read_text())["records"]
  (record,) = records
  q, header = fmt.decode_quantized((out / "files" / record["file"]).read_bytes())
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(fmt, "VERSION", 4)
    old = codec.encode(q, header.height, header.width, bits_back=header.bits_back)
  victim = tmp_path / "victim.gimg"
  victim.write_bytes(old)
  record["file"] = "../../victim.gimg"
  (out / "records.json").write_text(json.dumps({"records": records}))
  again = run_experiment("compress.py", *args, "--recode")
  assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
  assert "unreadable results file" in again.stderr and "../../victim.gimg" in again.stderr
  assert victim.read_bytes() == old
