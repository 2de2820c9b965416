"""Decoding cost bounded by what the caller allows (issue 53 items 2 and 8): ``max_pixels``
checked from headers before any work, large images rendered band by band (the same image to the
bit), batches cut by pixels, and payloads that must end exactly where the file does."""

import zlib

import jax
import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.decoder import batch_groups
from gi_jax.codec.render import render_decoded, render_quantized_batch
from gi_jax.codec.format import Header, canonicalize, decode_quantized
from gi_jax.codec.quantize import init_quantizers, to_quantized
from gi_jax.codec import bitio, cli
from gi_jax.errors import CodecError, ImageTooLargeError, InvalidInputError

H, W = 40, 56   # partial tiles on both axes: 3 tile rows, 4 tile columns


def random_quantized(n=60, seed=0, height=H, width=W, **config):
  g = gi_jax.init_gaussians(jax.random.key(seed), n, height, width, "cholesky")
  config = codec.QuantizerConfig(**config)
  quantizers = init_quantizers(jax.random.key(seed + 1), g, config)
  return to_quantized(g, quantizers, config, (height, width)).to_numpy()


# -- bands ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_a_banded_render_equals_the_one_piece_render_to_the_bit(backend):
  sets = [canonicalize(random_quantized(seed=s)) for s in (0, 1)]
  whole = np.asarray(render_quantized_batch(sets, H, W, backend, band_rows=0))
  # 3 tile rows: a band of two, then a shorter last one (its last tile row cut at row 40).
  banded = render_quantized_batch(sets, H, W, backend, band_rows=2)
  np.testing.assert_array_equal(np.asarray(banded), whole)
  assert whole.std() > 0.05   # an image, not zeros


@pytest.mark.parametrize("channels", [1, 4])
def test_bands_keep_any_channel_count(channels):
  g = gi_jax.init_gaussians(jax.random.key(0), 60, H, W, "cholesky", channels=channels)
  whole = np.asarray(render_decoded(g, H, W, "reference", band_rows=0))
  banded = np.asarray(render_decoded(g, H, W, "reference", band_rows=2))
  assert whole.shape == (H, W, channels)
  np.testing.assert_array_equal(banded, whole)


def test_decode_renders_large_images_in_bands_and_band_rows_is_checked():
  data = codec.encode(random_quantized(), H, W)
  whole, _ = codec.decode(data, "reference", band_rows=0)
  banded, _ = codec.decode(data, "reference", band_rows=2)
  np.testing.assert_array_equal(banded, whole)
  with pytest.raises(InvalidInputError, match="band_rows"):
    codec.decode(data, "reference", band_rows=-1)


# -- max_pixels and batches ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_file():
  return codec.encode(random_quantized(n=20), H, W)


def _no_entropy_decoding(monkeypatch):
  def refuse(*_):
    raise AssertionError("a file was entropy-decoded before every header was checked")
  monkeypatch.setattr(codec.decoder, "decode_quantized", refuse)


def test_max_pixels_refuses_a_file_from_its_header_before_any_work(small_file, monkeypatch):
  _no_entropy_decoding(monkeypatch)
  with pytest.raises(ImageTooLargeError, match=f"{W}x{H} is 2,240 pixels, over the limit of 2,239"):
    codec.decode(small_file, "reference", max_pixels=H * W - 1)
  taller = codec.encode(random_quantized(n=20, height=2 * H), 2 * H, W)
  with pytest.raises(ImageTooLargeError, match="b.gimg"):   # every header before any decoding
    codec.decode_batch([small_file, taller], "reference", names=["a.gimg", "b.gimg"],
                       max_pixels=H * W)
  for bad in (0, -1, 2.5, True):
    with pytest.raises(InvalidInputError, match="max_pixels"):
      codec.decode(small_file, "reference", max_pixels=bad)


def test_batch_groups_cut_batches_by_pixels():
  q = random_quantized(n=20)
  small = Header(H, W, 20, "cholesky", True, 6, 2, 16, 0, None, None, 0, 0)
  large = small._replace(height=4 * H)
  decoded = [(q, small)] * 5 + [(q, large)]
  groups = batch_groups(decoded, max_batch_pixels=2 * H * W)
  assert groups == [(H, W, [0, 1]), (H, W, [2, 3]), (H, W, [4]), (4 * H, W, [5])]
  assert batch_groups(decoded, max_batch_pixels=None) == [(H, W, [0, 1, 2, 3, 4]),
                                                                (4 * H, W, [5])]


def test_gi_decode_max_pixels(small_file, tmp_path, capsys):
  source = tmp_path / "a.gimg"
  source.write_bytes(small_file)
  (tmp_path / "b.gimg").write_bytes(small_file)
  assert cli.decode_main([str(source), str(tmp_path / "a.png"), "--max_pixels", "100"]) == 1
  assert "over the limit of 100" in capsys.readouterr().err
  assert not (tmp_path / "a.png").exists()
  out = tmp_path / "out"
  files = [str(source), str(tmp_path / "b.gimg")]
  assert cli.decode_main(files + ["--out_dir", str(out), "--max_pixels", "100", "--quiet"]) == 1
  assert "a.gimg" in capsys.readouterr().err and not out.exists()
  assert cli.decode_main([str(source), str(tmp_path / "a.png"), "--max_pixels", "-1"]) == 1
  assert "--max_pixels must be >= 0" in capsys.readouterr().err


# -- payloads end exactly where the file does -----------------------------------------------------

def _with_crc(body: bytes) -> bytes:
  return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize("bits_back", [False, True])
def test_a_payload_cut_short_with_its_crc_recomputed_is_corrupt(bits_back):
  data = codec.encode(random_quantized(n=300), H, W, bits_back=bits_back)
  header = codec.read_header(data)[0]
  body = data[:-4]
  decode_quantized(data)
  cuts = [body[:-k] for k in (1, 2, 3, 4, 5, 9)] + [body[:header.header_bytes]]  # last: empty
  for cut in cuts:
    with pytest.raises(CodecError):
      decode_quantized(_with_crc(cut))


def test_every_payload_ends_in_its_end_marker():
  # A single Gaussian's streams are all constant: its payload is the end marker alone.
  data = codec.encode(random_quantized(n=1), H, W)
  header = codec.read_header(data)[0]
  assert header.pad == 1 and header.payload_bytes > 0
  with pytest.raises(CodecError, match="padding"):
    decode_quantized(_with_crc(data[:header.header_bytes]))
  # A header without it (as files before the marker were written) is refused from the header.
  at = 6 + sum(len(bitio.varint(v)) for v in (H, W, 1))
  assert data[at] == 1
  with pytest.raises(CodecError, match="0 padding symbols"):
    decode_quantized(_with_crc(data[:at] + b"\0" + data[at + 1:-4]))


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
def test_the_band_kernel_lowers_to_triton_for_a_gpu():
  # As tests/pallas/test_rasterize.py does for the other kernels: the lowering runs without a GPU.
  from gi_jax.pallas.rasterize import _rasterize_band
  gaussians = random_quantized().dequantize()
  grid = gi_jax.binning.TileGrid(32, W)
  proj = gi_jax.binning.project(gaussians, grid)
  bins = gi_jax.binning.bin_intersections(proj, grid, 1024)
  h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132,
                                     platform="cuda")
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                abstract_device=h100)):
    lowered = _rasterize_band.trace(proj.means, proj.conics, proj.colors, bins, np.int32(1),
                                    height=32, width=W, interpret=False).lower(
                                        lowering_platforms=("cuda",))
  assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1
