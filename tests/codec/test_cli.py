"""gi_jax.codec.cli: gi-encode and gi-decode, in this process through their main functions (and
each once as a process of its own).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from gi_jax import codec, io
from gi_jax.codec.rate import rate_model
from gi_jax.codec import cli
from tests.codec.helpers import H, W


def test_cli_roundtrip(tmp_path, target, capsys):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  out = str(tmp_path / "x.gimg")
  assert cli.encode_main([src, out, "--num_gaussians", "64", "--steps", "0",
                          "--finetune_steps", "0"]) == 0
  png = str(tmp_path / "back.png")
  assert cli.decode_main([out, png]) == 0
  with open(out, "rb") as f:
    _, info = codec.decode(f.read())
  decoded = io.load_image(png)
  assert decoded.shape == (H, W, 3)
  np.testing.assert_array_equal(decoded, io.quantize_8bit(np.asarray(_)))
  err = capsys.readouterr().err
  assert "bpp" in err and "no fitting steps" in err and "nan" not in err
  # Errors are one line and a non-zero status, not a traceback.
  assert cli.decode_main([src, str(tmp_path / "y.png")]) == 1
  assert "not a GaussianImage file" in capsys.readouterr().err
  assert cli.main(["nonsense"]) == 2
  chosen = str(tmp_path / "k.gimg")
  assert cli.encode_main([src, chosen, "--num_gaussians", "64", "--steps", "0",
                          "--finetune_steps", "2", "--codebook_sizes", "4,8"]) == 0
  assert "of 4 (" in capsys.readouterr().err
  assert cli.encode_main([src, str(tmp_path / "bad.gimg"), "--codebook_sizes", "4,1"]) == 1
  assert "codebook_size" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")
  wide = str(tmp_path / "w.gimg")
  for flags, wide_sigma in [(["--wide_sigma", "0.5", "--wide_min_pixels", "0"], 0.5),
                            (["--wide_sigma", "0.5"], 0.0),  # 16 pixels per Gaussian: not wide
                            (["--wide_min_pixels", "10"], 2.0)]:
    assert cli.encode_main([src, wide, "--num_gaussians", "64", "--steps", "0",
                            "--finetune_steps", "0", *flags]) == 0
    with open(wide, "rb") as f:
      assert codec.read_header(f.read())[0].wide_sigma == wide_sigma
  assert cli.encode_main([src, str(tmp_path / "bad.gimg"), "--paper", "--wide_sigma", "2"]) == 1
  assert "grid positions" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")
  for rate in ("nan", "0", "-1"):
    assert cli.encode_main([src, str(tmp_path / "bad.gimg"), "--learning_rate", rate]) == 1
    assert "learning_rate must be a finite number > 0" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")


@pytest.mark.parametrize("sizes", ["4,x", "0", "8,-1", ""])
def test_cli_codebook_sizes_are_positive_integers(tmp_path, sizes, capsys):
  # gi-encode parses the list itself: the codec's commands need nothing of the experiments.
  with pytest.raises(SystemExit) as stop:
    cli.encode_main(["in.png", str(tmp_path / "out.gimg"), "--codebook_sizes", sizes])
  assert stop.value.code == 2
  assert "--codebook_sizes must be positive integers" in capsys.readouterr().err
  parsed = cli._encode_parser().parse_args(["in.png", "out.gimg", "--codebook_sizes", "16,32"])
  assert parsed.codebook_sizes == (16, 32)


def test_cli_encodes_at_a_target_bpp(tmp_path, target, capsys):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  out = str(tmp_path / "x.gimg")
  # 32×32 is far below the pixels per Gaussian the model was measured on: the log says so.
  assert cli.encode_main([src, out, "--bpp", "4", "--steps", "0", "--finetune_steps", "0"]) == 0
  model = rate_model()
  n = model.gaussians_for_bpp(4, H, W)
  with open(out, "rb") as f:
    assert codec.read_header(f.read())[0].num_gaussians == n
  err = capsys.readouterr().err
  assert f"--bpp 4: pass 1: {n} Gaussians (predicted {model.bpp(n, H, W):.4f} bpp" in err
  assert "outside" in err
  for argv, message in [(["--bpp", "0.001"], "below the smallest"),
                        (["--bpp", "4", "--paper"], "no rate model"),
                        (["--bpp", "4", "--bpp_passes", "0"], "passes must be"),
                        (["--num_gaussians", "10", "--bpp_passes", "2"], "needs --bpp")]:
    assert cli.encode_main([src, str(tmp_path / "bad.gimg")] + argv) == 1
    assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "bad.gimg")
  with pytest.raises(SystemExit):
    cli.encode_main([src, out, "--bpp", "4", "--num_gaussians", "10"])
  assert "not allowed with" in capsys.readouterr().err


def test_cli_info_says_where_the_bits_go(tmp_path, small_files, capsys):
  names = []
  for i, data in enumerate(small_files[:2]):
    names.append(str(tmp_path / f"in{i}.gimg"))
    with open(names[-1], "wb") as f:
      f.write(data)
  assert cli.decode_main(["--info"] + names) == 0
  out = capsys.readouterr().out
  for name, data in zip(names, small_files):
    assert f"{name}: {W}×{H}, 40 Gaussians, {len(data):,} bytes" in out
  assert out.count("color1 ") == 2 and "order (bits-back" in out and "not bits-back" in out
  assert sorted(os.listdir(tmp_path)) == ["in0.gimg", "in1.gimg"]  # renders nothing
  # A bad file is named, the others still reported, and the status says so.
  assert cli.decode_main(["--info", str(tmp_path / "missing.gimg"), names[0]]) == 1
  captured = capsys.readouterr()
  assert "missing.gimg" in captured.err and names[0] in captured.out
  with pytest.raises(SystemExit):
    cli.decode_main(["--info", names[0], "--out_dir", str(tmp_path / "out")])
  assert "--out_dir" in capsys.readouterr().err


def test_cli_decodes_many_files_into_a_folder(tmp_path, mixed_files, capsys):
  names = []
  for i, data in enumerate(mixed_files):
    names.append(str(tmp_path / f"in{i}.gimg"))
    with open(names[-1], "wb") as f:
      f.write(data)
  out = tmp_path / "out"
  for workers in ("0", "2"):
    assert cli.decode_main(names + ["--out_dir", str(out), "--batch_files", "4",
                                    "--workers", workers, "--backend", "reference"]) == 0
    assert "6 files" in capsys.readouterr().err
    for i, data in enumerate(mixed_files):
      image, _ = codec.decode(data, "reference")
      np.testing.assert_array_equal(io.load_image(str(out / f"in{i}.png")),
                                    io.quantize_8bit(image))
  # A corrupt file in the second batch: named, and nothing is written, not even the first batch;
  # a folder that existed keeps what it had, one the run created is removed.
  with open(names[5], "wb") as f:
    f.write(mixed_files[5][:-3])
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  (out / "in0.png").write_bytes(b"old")
  before["in0.png"] = b"old"
  assert cli.decode_main(names + ["--out_dir", str(out), "--batch_files", "4"]) == 1
  assert f"{names[5]}: " in capsys.readouterr().err
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
  fresh = tmp_path / "fresh"
  assert cli.decode_main(names + ["--out_dir", str(fresh), "--batch_files", "4"]) == 1
  assert f"{names[5]}: " in capsys.readouterr().err
  assert not fresh.exists()
  twin = str(tmp_path / "a" / "in0.gimg")
  assert cli.decode_main([names[0], twin, "--out_dir", str(fresh)]) == 1
  assert "same name" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.decode_main(names[:3])
  assert "--out_dir" in capsys.readouterr().err


def test_cli_refuses_an_output_it_cannot_write_before_fitting(tmp_path, target, capsys,
                                                              monkeypatch):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  monkeypatch.setattr(cli, "encode_image", lambda *a, **k: pytest.fail("encoded"))
  assert cli.encode_main([src, str(tmp_path)]) == 1
  assert "is a folder" in capsys.readouterr().err
  (tmp_path / "file").write_text("")
  assert cli.encode_main([src, str(tmp_path / "file" / "x.gimg")]) == 1
  assert "cannot write there" in capsys.readouterr().err
  assert cli.decode_main([src, str(tmp_path)]) == 1
  assert "is a folder" in capsys.readouterr().err


def _command(name):
  """The installed console script (beside this interpreter), as a user runs it."""
  path = os.path.join(os.path.dirname(sys.executable), name)
  return [path] if os.path.exists(path) else [
      sys.executable, "-c", f"import sys; from gi_jax.codec.cli import {name[3:]}_entry as e; "
      f"sys.argv[0] = {name!r}; sys.exit(e())"]


def test_commands_run_as_processes(tmp_path, target):
  # Each command's one run as a process of its own: the rest of this file calls their main.
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  encoded = subprocess.run(_command("gi-encode") + [src, str(tmp_path / "x.gimg"),
                                                    "--num_gaussians", "64", "--steps", "0",
                                                    "--finetune_steps", "0"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert encoded.returncode == 0, encoded.stderr[-2000:]
  assert "bpp" in encoded.stderr
  decoded = subprocess.run(_command("gi-decode") + [str(tmp_path / "x.gimg"),
                                                    str(tmp_path / "back.png")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert decoded.returncode == 0, decoded.stderr[-2000:]
  with open(tmp_path / "x.gimg", "rb") as f:
    image, _ = codec.decode(f.read())
  np.testing.assert_array_equal(io.load_image(str(tmp_path / "back.png")),
                                io.quantize_8bit(np.asarray(image)))


def test_cli_codes_the_channels_asked_for(tmp_path, target, capsys):
  src = str(tmp_path / "in.png")
  io.save_image(src, target)
  out, png = str(tmp_path / "gray.gimg"), str(tmp_path / "gray.png")
  assert cli.encode_main([src, out, "--channels", "1", "--num_gaussians", "32", "--steps", "0",
                          "--finetune_steps", "0", "--quiet"]) == 0
  assert cli.decode_main([out, png]) == 0
  assert io.load_image(png, channels=None).shape == target.shape[:2] + (1,)
  assert cli.encode_main([src, str(tmp_path / "x.gimg"), "--channels", "1", "--bpp", "1"]) == 1
  assert "--bpp needs --channels 3" in capsys.readouterr().err

