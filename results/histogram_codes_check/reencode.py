"""Re-encodes .gimg files with the entropy models' histogram codes rounded count by count (the
encoder before this check) and chosen for the fewest bits (`format._cheapest_codes`), from the
same symbols: bytes, model bytes, and that both decode to the same symbols.

Usage: python reencode.py FILE.gimg ...
"""

import sys

import numpy as np

from gi_jax import codec
from gi_jax.codec import format as fmt


def encoded(q, header, choose_codes):
  kept = fmt._cheapest_codes
  fmt._cheapest_codes = choose_codes
  try:
    return codec.encode(q, header.height, header.width, bits_back=header.bits_back)
  finally:
    fmt._cheapest_codes = kept


def model_bytes(data):
  return sum(s["model_bits"] for s in codec.rate_breakdown(data)["streams"]) / 8


def main(paths):
  print(f"{'file':30s} {'N':>6s} {'rounded':>8s} {'cheapest':>8s} {'change':>7s}  models (bytes)")
  for path in paths:
    q, header = codec.decode_quantized(open(path, "rb").read())
    rounded = encoded(q, header, fmt._histogram_codes)
    cheapest = encoded(q, header, fmt._cheapest_codes)
    a, b = codec.decode_quantized(rounded)[0], codec.decode_quantized(cheapest)[0]
    assert all(np.array_equal(x, y) for x, y in zip(
        [a.position_codes, a.cov_codes, a.color_indices], [b.position_codes, b.cov_codes,
                                                           b.color_indices]))
    change = 100 * (len(cheapest) - len(rounded)) / len(rounded)
    print(f"{path.split('/')[-1]:30s} {header.num_gaussians:6d} {len(rounded):8d} "
          f"{len(cheapest):8d} {change:+6.2f}%  {model_bytes(rounded):6.1f} -> "
          f"{model_bytes(cheapest):6.1f}")


if __name__ == "__main__":
  main(sys.argv[1:])
