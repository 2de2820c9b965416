"""experiments/compress.py, quantizers.py, quality.py and bench.py: checks before any work (an
unwritable --out_dir, a records file of the wrong shape), file names from records kept in their
folder, and the paper's Kodak points compared only where they apply. (Their full runs are in
test_codec.py, test_quality.py and test_bench.py.)"""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from gi_jax import codec, io
from gi_jax.codec import format as fmt
from gi_jax.io import sample_image_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny runs: were a check to come after the work, the work would still end soon.
CLIS = {
    "compress.py": ["--num_gaussians=10", "--steps=1", "--finetune_steps=1", "--noclassic",
                    "--decode_repeats=1"],
    "quantizers.py": ["--num_gaussians=10", "--steps=1", "--finetune_steps=1", "--variant=base:"],
    "quality.py": ["--num_gaussians=10", "--steps=2", "--modes=random"],
}
RECORDS = {"compress.py": "records.json", "quantizers.py": "quantizers.json",
           "quality.py": "quality.json"}


def run(script, *args, cwd):
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", script), *args],
                        cwd=cwd, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=600)


@pytest.fixture
def dataset(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  Image.open(sample_image_path()).convert("RGB").crop((300, 200, 332, 232)).save(
      folder / "kodim23.png")
  return folder


@pytest.mark.parametrize("script", sorted(CLIS))
def test_unwritable_out_dir_is_one_clear_error_before_any_work(tmp_path, dataset, script):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  done = run(script, f"--dataset={dataset}", *CLIS[script], f"--out_dir={blocker / 'out'}",
             cwd=tmp_path)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert f"{script}: error:" in done.stderr and "cannot write there" in done.stderr
  assert blocker.read_text() == ""


@pytest.mark.parametrize("script", sorted(CLIS))
@pytest.mark.parametrize("text", ['{"records": [1]}', '{"records": [{"image": "kodim23.png"}]}'])
def test_records_file_of_the_wrong_shape_is_one_clear_error(tmp_path, dataset, script, text):
  out = tmp_path / "out"
  out.mkdir()
  (out / RECORDS[script]).write_text(text)
  done = run(script, f"--dataset={dataset}", *CLIS[script], f"--out_dir={out}", cwd=tmp_path)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert f"{script}: error:" in done.stderr and "unreadable results file" in done.stderr
  assert sorted(os.listdir(out)) == [RECORDS[script]]  # nothing written: no work done
  assert (out / RECORDS[script]).read_text() == text


def test_compress_keeps_to_its_folder_and_to_comparisons_that_apply(tmp_path, dataset):
  out = tmp_path / "out"
  args = [f"--dataset={dataset}", "--crop=24", "--num_gaussians=10", "--steps=2",
          "--finetune_steps=1", "--noclassic", "--decode_repeats=1", f"--out_dir={out}"]
  done = run("compress.py", *args, cwd=tmp_path)
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
  again = run("compress.py", *args, "--recode", cwd=tmp_path)
  assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
  assert "unreadable results file" in again.stderr and "../../victim.gimg" in again.stderr
  assert victim.read_bytes() == old


def test_bench_checks_its_output_before_measuring(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  done = run("bench.py", "--configs=64x48:200", "--repeats=1", f"--out={blocker / 'bench.json'}",
             cwd=tmp_path)
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert "bench.py: error:" in done.stderr and "cannot write there" in done.stderr
  assert "measuring" not in done.stderr
