"""experiments/harness.py: list flags, image selection, the results file and its record keys, and
figures without matplotlib; and the package without either."""

import dataclasses
import os
import subprocess
import sys

import pytest

import gi_jax
from gi_jax import codec
from gi_jax.errors import ImageFileError
from gi_jax.io import sample_image_path
from harness import (ResultsFile, codec_record_key, numbers, plot_summary, positive_integers,
                     pyplot, record_key, select_images)


def test_select_images_filters_by_name_then_count(tmp_path):
  for name in ("c.png", "a.png", "b.jpg", "notes.txt"):
    (tmp_path / name).write_bytes(b"")
  names = lambda paths: [os.path.basename(p) for p in paths]  # noqa: E731
  assert names(select_images(str(tmp_path))) == ["a.png", "b.jpg", "c.png"]
  assert names(select_images(str(tmp_path), ["c.png", "a.png"])) == ["a.png", "c.png"]
  assert names(select_images(str(tmp_path), ["c.png", "a.png"], max_images=1)) == ["a.png"]
  assert select_images(None) == [sample_image_path()]
  with pytest.raises(ImageFileError, match="notes.txt"):
    select_images(str(tmp_path), ["notes.txt"])
  for bad in (0, -1):  # not "all" nor "all but the last"
    with pytest.raises(ValueError, match="max_images"):
      select_images(str(tmp_path), max_images=bad)


def test_list_flags_parse_to_checked_numbers():
  assert positive_integers(["800", "3000"]) == [800, 3000]
  for bad in (["0"], ["ten"], []):
    with pytest.raises(ValueError, match="positive integers"):
      positive_integers(bad)
  rates = lambda values: numbers(values, "rates", float, lambda r: r > 0, "rates > 0")  # noqa
  assert rates(["0.5", "2"]) == [0.5, 2.0]
  for bad in (["0"], ["nan"], ["inf"], ["x"]):
    with pytest.raises(ValueError, match="--rates must be rates > 0"):
      rates(bad)


def test_results_file_finds_a_record_by_every_key_field(tmp_path):
  path = str(tmp_path / "results.json")
  key = record_key("a.png", 10, 5, "cholesky", 0)
  ResultsFile(path).add(dict(key, psnr=20.0))
  written = open(path).read()
  again = ResultsFile(path)
  assert again.find(**key)["psnr"] == 20.0
  assert again.find(**record_key("a.png", 10, 5, "cholesky", 0,
                                 clip_gradient="straight_through")) is None
  # A field the record lacks matches no value, not even None.
  assert again.find(**key, refine=None) is None
  assert again.matches(again.records[0], image="a.png")
  assert not again.matches(again.records[0], image="b.png")
  assert open(path).read() == written  # found, not rewritten


def test_codec_record_key_names_the_wide_positions_an_encode_uses():
  key = lambda **kw: codec_record_key(dataclasses.replace(codec.OURS, **kw))  # noqa: E731
  wide = lambda k: {f: v for f, v in k.items() if "wide" in f}  # noqa: E731
  assert wide(key(wide=None)) == dict(wide_sigma=0.0, wide_min_pixels=0.0)
  assert wide(codec_record_key(codec.OURS)) == dict(wide_sigma=2.0, wide_min_pixels=100.0)
  # The rule on every encode keys alike from either field, as it encodes alike.
  assert (key(wide=None, quantizers=dataclasses.replace(codec.OURS.quantizers, wide_sigma=2.0))
          == key(wide=codec.WidePositions(2.0, 0.0)))
  assert key(wide=codec.WidePositions(2.0, 64.0)) != codec_record_key(codec.OURS)
  assert codec_record_key(codec.PAPER) != codec_record_key(codec.OURS)


def test_records_resume_only_the_wide_positions_they_were_made_with(tmp_path):
  # A record matches a key by the fields the key names, so plain settings must name theirs: a
  # run without wide positions must not take a wide record for its own, nor the reverse.
  results = ResultsFile(str(tmp_path / "records.json"))
  plain = codec_record_key(dataclasses.replace(codec.OURS, wide=None))
  every = codec_record_key(dataclasses.replace(codec.OURS, wide=codec.WidePositions(2.0, 0.0)))
  results.add(dict(codec_record_key(codec.OURS), psnr=1.0))
  assert results.find(**plain) is None and results.find(**every) is None
  results.add(dict(plain, psnr=2.0))
  assert results.find(**plain)["psnr"] == 2.0 and results.find(**every) is None
  assert results.find(**codec_record_key(codec.OURS))["psnr"] == 1.0


def test_figures_without_matplotlib_are_one_clear_error(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra were not installed
  for draw in (pyplot, lambda: plot_summary(str(tmp_path / "summary.png"), [])):
    with pytest.raises(ImportError, match=r"pip install -e '\.\[plots\]'"):
      draw()
  assert not os.listdir(tmp_path)


def test_the_library_and_its_commands_need_neither_the_harness_nor_matplotlib(tmp_path):
  # A fresh process, not this one (which imported both): what the package and its commands pull in.
  root = os.path.dirname(os.path.dirname(os.path.abspath(gi_jax.__file__)))
  check = ("import sys, gi_jax, gi_jax.codec, gi_jax.codec.cli; "
           "print(sorted({'harness', 'matplotlib'} & set(sys.modules)))")
  done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root))
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"
