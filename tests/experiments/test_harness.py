"""experiments/harness.py: list flags, image selection, the results file and its record keys, and
figures without matplotlib; and the package without either."""

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

import gi_jax
from gi_jax import codec, recipes
from gi_jax.codec.pipeline import WidePositions
from gi_jax.errors import ImageFileError, InvalidInputError
from gi_jax.io import sample_image_path
from harness import (FIT_RECORD_FIELDS, NUMBER, STRING, ResultsFile, code_digest,
                     codec_record_key, file_in, numbers, other_code_note, plot_summary,
                     positive_integers, pyplot, record_key, report_other_code, select_images,
                     why_not_full_kodak)


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


def test_records_say_which_code_made_them_and_a_resumed_run_tells_of_others(tmp_path, capsys):
  path = str(tmp_path / "results.json")
  key = record_key("a.png", 10, 5, "cholesky", 0)
  ResultsFile(path).add(dict(key, psnr=20.0))
  mine = ResultsFile(path).find(**key)
  assert mine["code"] == code_digest() and len(code_digest()) == 8
  assert other_code_note([mine]) == ""
  # Still found under the same key (the code is no part of it), but the run says so.
  others = [dict(mine, code="0" * 8), {k: v for k, v in mine.items() if k != "code"}]
  assert other_code_note([mine] + others).startswith(" (2 made by other gi_jax code")
  # Rows added together are stamped alike, and a run that found them says so.
  results = ResultsFile(path)
  results.add(*[dict(key, psnr=20.0, row=i) for i in range(2)])
  assert all(r["code"] == code_digest() for r in results.records)
  report_other_code(others, "found")
  assert capsys.readouterr().out.startswith("found: (2 made by other gi_jax code")


def test_a_key_without_an_optional_field_is_its_default(tmp_path):
  results = ResultsFile(str(tmp_path / "results.json"))
  rgb = record_key("a.png", 10, 5, "cholesky", 0)
  gray = record_key("a.png", 10, 5, "cholesky", 0, channels=1)
  best = record_key("a.png", 10, 5, "cholesky", 0, recipe=recipes.BEST)
  assert "channels" not in rgb and gray["channels"] == 1 and "lr_factors" in best
  assert "adan_betas" not in rgb and best["adan_betas"] == [0.9, 0.99, 0.99]
  results.add(dict(gray, psnr=30.0))
  results.add(dict(best, psnr=31.0))
  assert results.find(**rgb) is None   # neither the grey fit nor the factors' is the plain RGB one
  assert results.find(**gray)["psnr"] == 30.0 and results.find(**best)["psnr"] == 31.0


def test_codec_record_key_names_the_wide_positions_an_encode_uses():
  key = lambda **kw: codec_record_key(dataclasses.replace(codec.OURS, **kw))  # noqa: E731
  wide = lambda k: {f: v for f, v in k.items() if "wide" in f}  # noqa: E731
  assert wide(key(wide=None)) == dict(wide_sigma=0.0, wide_min_pixels=0.0)
  assert wide(codec_record_key(codec.OURS)) == dict(wide_sigma=2.0, wide_min_pixels=100.0)
  # The rule on every encode keys alike from either field, as it encodes alike.
  assert (key(wide=None, quantizers=dataclasses.replace(codec.OURS.quantizers, wide_sigma=2.0))
          == key(wide=WidePositions(2.0, 0.0)))
  assert key(wide=WidePositions(2.0, 64.0)) != codec_record_key(codec.OURS)
  assert codec_record_key(codec.PAPER) != codec_record_key(codec.OURS)


def test_records_resume_only_the_wide_positions_they_were_made_with(tmp_path):
  # A record matches a key by the fields the key names, so plain settings must name theirs: a
  # run without wide positions must not take a wide record for its own, nor the reverse.
  results = ResultsFile(str(tmp_path / "records.json"))
  plain = codec_record_key(dataclasses.replace(codec.OURS, wide=None))
  every = codec_record_key(dataclasses.replace(codec.OURS, wide=WidePositions(2.0, 0.0)))
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


def test_results_files_of_two_runs_merge_their_records(tmp_path):
  # Two runs that read the file before either wrote (as two CLIs started together do).
  path = str(tmp_path / "results.json")
  ResultsFile(path).add(dict(image="old.png", psnr=1.0))
  a, b = ResultsFile(path), ResultsFile(path)
  a.add(dict(image="a.png", psnr=2.0))
  b.add(dict(image="b.png", psnr=3.0))
  # A change in place (as compress.py --recode makes) wins over the other run's unchanged copy,
  # and the other run's later records stay.
  a.records[0]["psnr"] = 1.5
  a.save()
  b.add(dict(image="b2.png", psnr=4.0))
  records = json.loads(open(path).read())["records"]
  assert [(r["image"], r["psnr"]) for r in records] == [
      ("old.png", 1.5), ("a.png", 2.0), ("b.png", 3.0), ("b2.png", 4.0)]
  assert b.records == records


def _add_records(path: str, writer: int, count: int) -> None:
  results = ResultsFile(path)
  for i in range(count):
    results.add(dict(image=f"{writer}-{i}.png", psnr=float(i)))


def test_results_file_writers_at_once_lose_no_record(tmp_path):
  # Processes adding at once: without the lock, one's read–merge–write overwrites another's.
  path = str(tmp_path / "results.json")
  context = multiprocessing.get_context("spawn")  # no fork of this process's JAX threads
  writers = [context.Process(target=_add_records, args=(path, w, 40)) for w in range(4)]
  for w in writers:
    w.start()
  for w in writers:
    w.join(120)
  assert [w.exitcode for w in writers] == [0] * 4
  images = sorted(r["image"] for r in ResultsFile(path).records)
  assert images == sorted(f"{w}-{i}.png" for w in range(4) for i in range(40))


@pytest.mark.parametrize("text,problem", [
    ('{"records": [1]}', "record 0: 1 is not an object"),
    ('{"records": null}', 'not {"records": [...]}'),
    ('[]', 'not {"records": [...]}'),
    ('{"records": {}}', 'not {"records": [...]}'),
    ('{"rows": []}', 'not {"records": [...]}'),
    ('{"records": [{"image": "a.png"}]}', "record 0: no 'psnr'"),
    ('{"records": [{"image": "a.png", "psnr": "high"}]}', "'psnr' is \"high\", not a number"),
    ('{"records": [{"image": "a.png", "psnr": true}]}', "'psnr' is true, not a number"),
    ('{"records": [{"image": 3, "psnr": 1}]}', "'image' is 3, not a string"),
    ('{"records": [', "Expecting"),
])
def test_results_file_of_the_wrong_shape_is_one_clear_error(tmp_path, text, problem):
  path = tmp_path / "results.json"
  path.write_text(text)
  with pytest.raises(InvalidInputError, match="unreadable results file") as raised:
    ResultsFile(str(path), dict(image=STRING, psnr=NUMBER))
  assert problem in str(raised.value)
  # And when another run wrote it so meanwhile: the write stops, the file stays as it is.
  path.write_text('{"records": []}')
  results = ResultsFile(str(path), dict(image=STRING, psnr=NUMBER))
  path.write_text(text)
  with pytest.raises(InvalidInputError, match="unreadable results file"):
    results.add(dict(image="a.png", psnr=1.0))
  assert path.read_text() == text


def test_the_committed_records_are_well_formed():
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  results = ResultsFile(os.path.join(repo, "results", "table1", "kodak_cpu", "results.json"),
                        FIT_RECORD_FIELDS)
  assert len(results.records) == 24


def test_file_names_from_records_stay_in_their_folder(tmp_path):
  folder = tmp_path / "files"
  folder.mkdir()
  assert file_in(str(folder), "a.gimg") == str(folder / "a.gimg")
  (tmp_path / "outside.gimg").write_bytes(b"")
  (folder / "link.gimg").symlink_to(tmp_path / "outside.gimg")
  for bad in ("../outside.gimg", "../../etc/passwd", "/etc/passwd", "", ".", "..", "a/b.gimg",
              "link.gimg", None, 3):
    with pytest.raises(InvalidInputError, match="refusing to follow it"):
      file_in(str(folder), bad)


def test_published_kodak_points_apply_to_the_full_size_kodak_set_only():
  kodak = {f"kodim{i:02d}.png": (512, 768) if i % 5 else (768, 512) for i in range(1, 25)}
  assert why_not_full_kodak(kodak) is None
  assert why_not_full_kodak(dict(list(kodak.items())[:2])) == "2 of Kodak's 24 images"
  assert "192×192" in why_not_full_kodak({name: (192, 192) for name in kodak})
  assert "photo.png" in why_not_full_kodak(dict(kodak, **{"photo.png": (512, 768)}))
  assert "not Kodak's images" in why_not_full_kodak({"kodim23.jpg": (512, 768)})
