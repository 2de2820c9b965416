"""gi_jax.codec.format: the .gimg file (round trips, grid and wide positions, prediction,
codebooks, bits-back, entropy models, rate breakdown) and bad input to its decoder.

Everything runs on tiny images (32×32) with a few hundred Gaussians at most.
"""

import dataclasses

import jax
import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.format import MAGIC, VERSION, bits_back_report, canonicalize, decode_quantized, log2_factorial
from gi_jax.codec.quantize import fixed_length_bits, init_quantizers, to_quantized
from gi_jax.codec.render import render_decoded, render_quantized
from gi_jax.codec import bitio
from gi_jax.codec.format import (breakdown, codebooks, container, entropy, payload, prediction,
                                 streams)
from gi_jax.errors import CodecError, InvalidInputError
from tests.codec.helpers import (H, W, assert_same_symbols, random_quantized, wide_quantized,
                                 smaller_sigma, correlated_quantized, with_crc)


@pytest.mark.parametrize("bits_back,color_bits", [(False, 0), (True, 0), (False, 6), (True, 4)])
def test_encode_decode_roundtrip_is_exact(bits_back, color_bits):
  # 64 Gaussians: the size the fine-tuning and CLI tests render too.
  quantized = random_quantized(64, color_bits=color_bits)
  data = codec.encode(quantized, H, W, bits_back=bits_back)
  image, info = codec.decode(data, backend="reference")
  canonical = canonicalize(quantized)
  assert_same_symbols(info["quantized"], canonical)
  assert bool(data[5] & container.FLAG_UNIFORM_COLORS) == bool(color_bits)
  # Bit-exact: the decoder's image is the decoder's render of the encoder's (canonical) symbols;
  # dequantized outside the decoder's jitted call, within float rounding.
  np.testing.assert_array_equal(image, render_quantized(canonical, H, W, "reference"))
  expected = render_decoded(canonical.dequantize(), H, W, "reference")
  np.testing.assert_allclose(image, expected, atol=1e-6)
  # Any order renders the same image up to float summation order.
  unordered = gi_jax.render(quantized.dequantize(), H, W, "reference")
  np.testing.assert_allclose(image, unordered, atol=2e-6)
  assert info["bpp"] == 8 * len(data) / (H * W)
  assert info["num_gaussians"] == quantized.num_gaussians and info["bits_back"] == bits_back


def test_roundtrip_rs_and_duplicates():
  q = random_quantized(120, seed=5, parameterization="rs")
  # Repeat some Gaussians: a multiset must survive bits-back ordering too.
  order = np.concatenate([np.arange(120), np.arange(20)])
  q = q.permute(order)
  for bits_back in (False, True):
    back, header = decode_quantized(codec.encode(q, 20, 40, bits_back=bits_back))
    assert header.parameterization == "rs" and (header.height, header.width) == (20, 40)
    np.testing.assert_array_equal(back.position_codes, canonicalize(q).position_codes)
    np.testing.assert_array_equal(back.cov_codes, canonicalize(q).cov_codes)


@pytest.mark.parametrize("bits_back", [False, True])
def test_grid_positions_roundtrip_and_cost_less(bits_back):
  q = random_quantized(200, seed=7, position_step=0.25)
  data = codec.encode(q, H, W, bits_back=bits_back)
  back, header = decode_quantized(data)
  assert header.position_cells == q.position_cells == (128, 128)
  np.testing.assert_array_equal(back.position_codes, canonicalize(q).position_codes)
  np.testing.assert_array_equal(back.dequantize().means_raw,
                                canonicalize(q).dequantize().means_raw)
  # Random positions: a quarter-pixel grid needs fewer bits than float16 positions.
  half = random_quantized(200, seed=7)
  assert len(data) < len(codec.encode(half, H, W, bits_back=bits_back))


@pytest.mark.parametrize("parameterization,wide_sigma", [("cholesky", 0.5), ("rs", 0.75)])
@pytest.mark.parametrize("bits_back", [True, False])
def test_wide_positions_roundtrip_on_even_cells_and_cost_less(parameterization, wide_sigma,
                                                              bits_back):
  q = wide_quantized(300, seed=4, parameterization=parameterization, wide_sigma=wide_sigma)
  wide = smaller_sigma(q) >= wide_sigma
  assert 50 < wide.sum() < 250 and not (q.position_codes[wide] % 2).any()
  assert (q.position_codes[~wide] % 2).any()
  data = codec.encode(q, H, W, bits_back=bits_back)
  back, header = decode_quantized(data)
  assert header.version == VERSION and header.wide_sigma == back.wide_sigma == wide_sigma
  assert_same_symbols(back, canonicalize(q))
  # The same symbols without the rule cost more (a bit per wide coordinate, less the four
  # models' cost, which at 300 Gaussians can take half of it).
  plain = codec.encode(dataclasses.replace(q, wide_sigma=0.0), H, W, bits_back=bits_back)
  assert len(data) < len(plain) - wide.sum() // 16
  np.testing.assert_array_equal(codec.decode(data)[0], codec.decode(plain)[0])


def test_wide_positions_with_predicted_covariance_roundtrip():
  correlated = correlated_quantized(300, seed=5)
  q = wide_quantized(300, seed=5, codes=correlated.cov_codes)
  q = dataclasses.replace(q, position_codes=q.position_codes & np.uint16(0xFFFE))  # all even
  data = codec.encode(q, H, W)
  assert codec.read_header(data)[0].cov_predictor is not None
  assert_same_symbols(decode_quantized(data)[0], canonicalize(q))


def test_encode_puts_wide_gaussians_on_even_cells_by_the_files_rule():
  # A set whose float32 rule kept some wide Gaussians on odd cells (forged here): the file's
  # rule decides, and moves them one cell down; the others keep their cells.
  q = wide_quantized(200, seed=6)
  wide = smaller_sigma(q) >= 0.5
  odd = dataclasses.replace(q, position_codes=q.position_codes | np.uint16(1))
  back = decode_quantized(codec.encode(odd, H, W))[0]
  expected = np.where(wide[:, None], q.position_codes, q.position_codes | np.uint16(1))
  assert_same_symbols(back, canonicalize(dataclasses.replace(q, position_codes=expected)))


def test_wide_sigma_is_checked():
  for bad in (0.3, -1.0, 40.0, float("nan"), True):
    with pytest.raises(InvalidInputError, match="wide_sigma"):
      codec.QuantizerConfig(position_step=0.25, wide_sigma=bad)
  with pytest.raises(InvalidInputError, match="grid positions"):
    codec.QuantizerConfig(wide_sigma=1.0)
  with pytest.raises(CodecError, match="grid positions"):
    codec.encode(dataclasses.replace(random_quantized(20), wide_sigma=1.0), H, W)
  data = codec.encode(wide_quantized(40, seed=2), H, W)
  with pytest.raises(CodecError, match="inconsistent flags"):  # the flag without a grid
    codec.decode(with_crc(data[:5] + bytes([data[5] & ~container.FLAG_POSITION_GRID]) + data[6:-4]))
  header = codec.read_header(data)[0]
  at = 6 + sum(len(bitio.varint(v)) for v in (H, W, header.num_gaussians, header.pad) + tuple(
      c - 1 for c in header.position_cells))
  assert data[at] == 4  # 0.5 px in eighths
  with pytest.raises(CodecError, match="threshold of 0"):
    codec.decode(with_crc(data[:at] + b"\x00" + data[at + 1:-4]))


@pytest.mark.parametrize("start,bits", [(streams.COV_COLUMN, 6), (streams.COLOR_COLUMN, 3)])
def test_prediction_is_invertible(start, bits):
  rng = np.random.default_rng(0)
  table = rng.integers(0, 1 << bits, (500, 10))
  for coef in (np.zeros(5), np.asarray([0.5, 3.0, -1.2, 0.7, 80.0]), np.asarray([1e4] * 5)):
    coef = coef.astype(np.float16).astype(np.float32)
    coded = prediction.predict(table, coef, bits, start)
    residuals = coded[:, start + 1:start + 3]
    assert residuals.min() >= 0 and residuals.max() < 2 << bits
    np.testing.assert_array_equal(np.delete(coded, [start + 1, start + 2], 1),
                                  np.delete(table, [start + 1, start + 2], 1))
    np.testing.assert_array_equal(prediction.unpredict(coded, coef, bits, start), table)
  top = (1 << bits) - 1
  bad = prediction.predict(np.full((1, 10), top), np.zeros(5, np.float32), bits, start)
  with pytest.raises(CodecError, match="outside its range"):
    prediction.unpredict(bad, np.asarray([0, top, 0, 0, top], np.float32), bits, start)


@pytest.mark.parametrize("color_bits", [0, 5])
def test_predictions_roundtrip_and_are_chosen_when_shorter(color_bits):
  q = correlated_quantized(color_bits=color_bits)
  data = codec.encode(q, H, W)
  back, header = decode_quantized(data)
  assert header.cov_predictor is not None
  assert (header.color_predictor is not None) == bool(color_bits)
  assert_same_symbols(back, canonicalize(q))
  # Chosen because it is shorter; uncorrelated codes keep the plain streams.
  header = codec.read_header(codec.encode(random_quantized(200, color_bits=color_bits), H, W))[0]
  assert header.cov_predictor is None and header.color_predictor is None
  # The colour flag means nothing without uniform colours: a forged one is refused.
  if not color_bits:
    with pytest.raises(CodecError, match="inconsistent flags"):
      forged = bytes([data[5] | container.FLAG_COLOR_PREDICTION])
      codec.decode(with_crc(data[:5] + forged + data[6:-4]))


def test_one_format_version():
  data = codec.encode(random_quantized(50, seed=2), H, W)
  assert data[4] == VERSION == 1
  for version in (0, 2, 6, 255):
    with pytest.raises(CodecError, match=f"unsupported format version {version}"):
      codec.decode(with_crc(data[:4] + bytes([version]) + data[5:-4]))


@pytest.mark.parametrize("stages,k", [(2, 16), (1, 2), (3, 256)])
def test_fixed_point_codebooks_roundtrip_and_are_shorter(stages, k):
  q = random_quantized(200, seed=5, codeword_fraction_bits=10)
  rng = np.random.default_rng(stages * k)
  spread = np.asarray([1.0] + [0.03] * (stages - 1))[:, None, None]  # residual stages are small
  values = np.round(rng.normal(0, 1, (stages, k, 3)) * spread * 1024) / 1024
  q = dataclasses.replace(q, codebooks=values.astype(np.float32),
                          color_indices=rng.integers(0, k, (200, stages)).astype(np.uint8))
  data = codec.encode(q, H, W)
  back, header = decode_quantized(data)
  assert_same_symbols(back, canonicalize(q))
  np.testing.assert_array_equal(back.codebooks, q.codebooks)
  # Fixed point where it is shorter (or float16 cannot hold the values); with 16 codewords and
  # more it takes under 12 bits a value against float16's 16.
  header_bytes, bits = codebooks.codebook_fields(q.codebooks)
  assert header.fixed_point_codebooks == (header_bytes == b"")
  if k >= 16:
    assert header.fixed_point_codebooks and len(bits) < 12 * stages * k * 3
  # Float16 codebooks off any coarse grid stay float16.
  plain = random_quantized(200, seed=5)
  assert not codec.read_header(codec.encode(plain, H, W))[0].fixed_point_codebooks
  # Fixed-point codewords with uniform colours mean nothing: a forged flag is refused.
  uniform = codec.encode(random_quantized(50, seed=2, color_bits=5), H, W)
  with pytest.raises(CodecError, match="inconsistent flags"):
    codec.decode(with_crc(uniform[:5] + bytes([uniform[5] | container.FLAG_FIXED_POINT_CODEBOOKS]) +
                          uniform[6:-4]))


@pytest.mark.parametrize("fields,message", [((25,), "finer than"), ((3, 0, 27), "27-bit"),
                                            ((3, -(1 << 25), 0), "beyond")])
def test_corrupt_fixed_point_codebooks_are_refused(fields, message):
  bits = bitio.BitWriter()
  bits.gamma(fields[0] + 1)
  if len(fields) > 1:
    bits.signed(fields[1])
    bits.write(fields[2], 5)
  bits.write(0, 64)
  with pytest.raises(CodecError, match=message):
    codebooks.read_fixed_point_codebooks(bitio.BitReader(bits.to_bytes()), 2, 8)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 32, 33, 64, 1000])
def test_smaller_after_counts_later_smaller_keys(n):
  keys = np.random.default_rng(n).permutation(4 * n)[:n] - n  # distinct, some negative
  expected = [int((keys[i + 1:] < keys[i]).sum()) for i in range(n)]
  np.testing.assert_array_equal(payload._smaller_after(keys), expected)


@pytest.mark.parametrize("case", ["distinct", "repeats", "wide keys"])
def test_bits_back_runs_roundtrip(case):
  # The decoder ranks runs of Gaussians with sorts, with a sorted set once a Gaussian repeats,
  # and with tuples when the symbols do not pack into 62 bits: all must agree with the encoder.
  if case == "wide keys":
    g = gi_jax.init_gaussians(jax.random.key(3), 700, H, W)
    config = codec.QuantizerConfig(stages=4, codebook_size=256)
    q = to_quantized(g, init_quantizers(jax.random.key(4), g, config), config,
                           (H, W)).to_numpy()
  else:
    q = random_quantized(700, seed=3)
  if case == "repeats":  # 150 repeats: runs then repeat their own and other runs' Gaussians
    q = q.permute(np.concatenate([np.arange(700), np.arange(600, 700), np.arange(0, 50)]))
  data = codec.encode(q, H, W)
  back, header = decode_quantized(data)
  assert_same_symbols(back, canonicalize(q))
  widths = sum((m.span - 1).bit_length() for m in codec.read_header(data)[2])
  assert (widths > 62) == (case == "wide keys")
  # Bits-back ordering saves close to the bound in every case.
  report = bits_back_report(q, H, W, encoded=data)
  assert report["saved_bits"] > 0.9 * report["multiset_bound_bits"]


def test_bits_back_saving(quantized):
  report = bits_back_report(quantized, H, W)
  n = quantized.num_gaussians
  bound = log2_factorial(n)
  assert report["bound_bits"] == pytest.approx(bound)
  # Positive, close to log2(N!), and above it by no more than word rounding (2 × 32 bits).
  assert 0.9 * bound < report["saved_bits"] <= bound + 64


def test_rate_breakdown_adds_up_to_the_file(small_files):
  for data in small_files:
    info = codec.rate_breakdown(data)
    header = codec.read_header(data)[0]
    parts = info["header_bits"] + info["pad_bits"] + info["order_bits"] + info["crc_bits"] + sum(
        s["model_bits"] + s["payload_bits"] for s in info["streams"])
    assert parts == pytest.approx(8 * len(data))
    wide_streams = 4 if header.wide_sigma else 0  # the wide Gaussians' positions
    assert len(info["streams"]) == 7 + header.stages + wide_streams and info["header_bits"] > 0
    assert ("cov1_residual" in breakdown.stream_names(header)) == (header.cov_predictor is not None)
    # The ideal lengths are what ANS writes, to within its word rounding; bits-back then gives
    # back log2(N!) of them, to within that rounding (2 × 32 bits; at N = 40 the bound is 159).
    n = info["num_gaussians"]
    assert info["order_bound_bits"] == pytest.approx(-log2_factorial(n))
    assert info["bits_back"] == header.bits_back
    if header.bits_back:
      assert abs(info["order_bits"] - info["order_bound_bits"]) <= 64
    else:
      assert abs(info["order_bits"]) <= 64
  # Per stream, the payload is the entropy coder's cost of the symbols table less its model.
  q = random_quantized(40, seed=3)  # small_files[1], without bits-back or predictions
  assert codec.read_header(small_files[1])[0].cov_predictor is None
  table = streams.to_streams(streams.canonicalize(q))
  alphabets = streams.alphabets(q.cov_bits, streams.color_alphabets(*q.codebooks.shape[:2]))
  for s, column, alphabet in zip(codec.rate_breakdown(small_files[1])["streams"], table.T,
                                 alphabets):
    assert s["model_bits"] + s["payload_bits"] == pytest.approx(
        entropy.stream_model_and_bits(column, alphabet)[1])


def _histogram_counts(kind, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "peaked":  # a prediction residual: most symbols near the middle
    residuals = np.clip(np.round(rng.laplace(0, 3, 800)) + 40, 0, 79).astype(int)
    counts = np.bincount(residuals, None, 80)
  elif kind == "sparse":  # a few hundred symbols over 64 codes, with gaps
    counts = np.bincount(rng.integers(0, 64, 150), None, 64)
  elif kind == "flat":
    counts = np.bincount(rng.integers(0, 256, 20000), None, 256)
  else:  # "tiny": a handful of symbols
    counts = np.asarray([3, 0, 0, 1, 0, 7, 1])
  used = np.flatnonzero(counts)
  return counts[used[0]:used[-1] + 1].astype(np.float64)


@pytest.mark.parametrize("kind", ["peaked", "sparse", "flat", "tiny"])
def test_cheapest_histogram_codes_cost_no_more_than_rounding(kind):
  counts = _histogram_counts(kind)
  nearest, cheapest = entropy._histogram_codes(counts), entropy._cheapest_codes(counts)
  assert entropy._histogram_bits(cheapest, counts) <= entropy._histogram_bits(nearest, counts)
  # A model the decoder accepts: codes in range, ends used, every used symbol with a weight.
  assert cheapest.min() >= 0 and cheapest.max() <= entropy._Q_MAX
  assert cheapest[0] >= 1 and cheapest[-1] >= 1 and (cheapest[counts > 0] >= 1).all()
  model = entropy.StreamModel(512, 7, cheapest)
  bits = bitio.BitWriter()
  model.write(bits)
  back = entropy.StreamModel.read(bitio.BitReader(bits.to_bytes(), "model"), 512)
  np.testing.assert_array_equal(back.codes, cheapest)
  # The bits the encoder counts are what the model block and the ideal payload take.
  assert entropy._histogram_bits(cheapest, counts) + 1 + 2 * 9 == pytest.approx(
      entropy.model_bits(model) +
      entropy.payload_bits(model, np.concatenate([np.zeros(7), counts])))


def test_cheapest_histogram_codes_fill_costly_gaps():
  # Rounding sends a lone gap as two large steps (down to 0 and back); filling it with its
  # neighbours' weight costs the payload less than the steps cost the model.
  counts = _histogram_counts("sparse")
  nearest, cheapest = entropy._histogram_codes(counts), entropy._cheapest_codes(counts)
  assert (nearest == 0).any() and entropy._histogram_bits(
      cheapest, counts) < entropy._histogram_bits(nearest, counts) - 20


def test_cheapest_histogram_codes_shorten_files_and_decode_the_same(monkeypatch):
  q = random_quantized(200, seed=5)
  data = codec.encode(q, H, W)
  with monkeypatch.context() as m:
    m.setattr(entropy, "_cheapest_codes", entropy._histogram_codes)
    rounded = codec.encode(q, H, W)
  assert len(data) < len(rounded)
  assert_same_symbols(decode_quantized(data)[0], decode_quantized(rounded)[0])


def test_entropy_coding_beats_fixed_length(quantized):
  data = codec.encode(quantized, H, W, bits_back=False)
  header = codec.read_header(data)[0]
  assert 8 * header.payload_bytes < fixed_length_bits(quantized.num_gaussians)


def test_identical_gaussians_are_padded_to_the_length_rule():
  n = 5000
  q = random_quantized(1).permute(np.zeros(n, np.int64))
  data = codec.encode(q, H, W)
  assert 8 * len(data) >= n
  back, header = decode_quantized(data)
  assert header.pad > 0 and back.num_gaussians == n


def test_encode_refuses_what_the_format_cannot_hold(quantized):
  n = quantized.num_gaussians
  bad = [dict(cov_codes=np.full((n, 3), 64)), dict(color_indices=np.full((n, 2), 8)),
         dict(codebooks=np.full((2, 8, 3), 0.1, np.float32)),  # not float16 values
         dict(position_codes=np.full((n, 2), 0x7C00, np.uint16)),   # infinity
         dict(cov_scale=np.asarray([1, np.nan, 1], np.float32)),
         dict(color_indices=np.zeros((n, 3), np.uint8)),
         dict(color_bits=5),  # uniform colours without their steps and offsets
         dict(color_bits=9, codebooks=None, color_scale=np.ones(3, np.float32),
              color_offset=np.zeros(3, np.float32))]
  uniform = random_quantized(n, color_bits=3)
  bad_uniform = [dict(color_indices=np.full((n, 3), 8, np.uint8)),
                 dict(color_offset=np.asarray([0, np.inf, 0], np.float32)),
                 dict(color_indices=np.zeros((n, 2), np.uint8))]
  for base, cases in ((quantized, bad), (uniform, bad_uniform)):
    for fields in cases:
      with pytest.raises(CodecError):
        codec.encode(dataclasses.replace(base, **fields), H, W)
  for height, width in ((0, W), (H, 1 << 16), (1 << 14, 1 << 14)):
    with pytest.raises(CodecError):
      codec.encode(quantized, height, width)


def test_clear_errors(small_files):
  data = small_files[0]
  cases = {
      b"": "truncated", b"GI": "truncated", b"PNG\x89rest": "not a GaussianImage",
      data[:4] + b"\x07" + data[5:]: "version 7", data[:30]: "truncated",
      data[:-1]: "checksum", data + b"\x00": "checksum",
      data[:10] + bytes([data[10] ^ 1]) + data[11:]: "checksum",
  }
  for bad, message in cases.items():
    with pytest.raises(CodecError, match=message):
      codec.decode(bad)
  with pytest.raises(CodecError, match="bytes"):
    codec.decode("GIMG")  # not bytes


def test_absurd_sizes_are_refused_before_allocating(small_files):
  body = small_files[0][:-4]
  header, *_ = codec.read_header(small_files[0])
  prefix = body[:6]

  def rebuilt(height, width, n, pad=1):
    # Re-write the varints, keep the rest, fix the checksum: only the claims are absurd.
    r = bitio.ByteReader(body)
    r.take(6)
    for _ in range(4):
      r.varint(1 << 62, "x")
    return with_crc(prefix + b"".join(bitio.varint(v) for v in (height, width, n, pad)) +
                    body[r.pos:])

  for height, width, n, message in [(H, W, 10**9, "Gaussians"), (H, W, 8 * 10**4, "Gaussians"),
                                    (10**6, W, 40, "height"), (30000, 30000, 40, "pixels"),
                                    (0, W, 40, "size"), (H, W, 0, "Gaussians")]:
    with pytest.raises(CodecError, match=message):
      codec.decode(rebuilt(height, width, n))
  with pytest.raises(CodecError, match="padding"):
    codec.decode(rebuilt(H, W, 40, pad=1000))
  # A plausible but wrong N (with a forged checksum) decodes to garbage or fails cleanly.
  for n in (header.num_gaussians - 1, header.num_gaussians + 1, header.num_gaussians + 50):
    try:
      q, _ = decode_quantized(rebuilt(H, W, n))
      assert q.num_gaussians == n
    except CodecError:
      pass


def test_hypothesis_fuzz_decoder(small_files):
  hypothesis = pytest.importorskip("hypothesis")
  st = hypothesis.strategies

  def check(data):
    try:
      q, header = decode_quantized(data)
    except CodecError:
      return
    # Whatever decodes is a consistent, bounded set.
    assert 1 <= q.num_gaussians <= 8 * len(data)
    assert q.cov_codes.shape == (q.num_gaussians, 3)

  edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)

  @hypothesis.settings(max_examples=200, deadline=None, derandomize=True,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(which=st.integers(0, len(small_files) - 1), edits=edits,
                    cut=st.integers(0, 10**6),
                    fix_crc=st.booleans(), junk=st.binary(max_size=64),
                    mode=st.sampled_from(["edit", "truncate", "junk", "magic_junk"]))
  def fuzz(which, edits, cut, fix_crc, junk, mode):
    data = bytearray(small_files[which])
    if mode == "edit":
      for pos, byte in edits:
        data[pos % len(data)] = byte
    elif mode == "truncate":
      data = data[:cut % len(data)]
    elif mode == "junk":
      data = bytearray(junk)
    else:
      data = bytearray(MAGIC + bytes([VERSION]) + junk)
    data = bytes(data)
    if fix_crc and len(data) > 4:
      data = with_crc(data[:-4])
    check(data)

  fuzz()
