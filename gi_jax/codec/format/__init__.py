"""The ``.gimg`` file: a quantized set written with ANS entropy coding and bits-back ordering.

``docs/file_format.md`` specifies the format. One module per idea:

- :mod:`~gi_jax.codec.format.container`: header fields, flags, limits and CRC; :func:`encode`,
  :func:`read_header`, :func:`decode_quantized`.
- :mod:`~gi_jax.codec.format.streams`: a set as a table of symbol streams, canonical order, the
  wide Gaussians' position streams.
- :mod:`~gi_jax.codec.format.prediction`: covariance and colour codes as prediction residuals.
- :mod:`~gi_jax.codec.format.entropy`: each stream's static model (histogram weights costing the
  fewest bits).
- :mod:`~gi_jax.codec.format.codebooks`: colour codebooks in float16 or fixed point.
- :mod:`~gi_jax.codec.format.payload`: the ANS payload and its bits-back order.
- :mod:`~gi_jax.codec.format.breakdown`: where a file's bits go (:func:`rate_breakdown`).
"""

from gi_jax.codec.format.breakdown import (bits_back_report, bits_per_pixel, log2_factorial,
                                           rate_breakdown, stream_names)
from gi_jax.codec.format.container import (MAGIC, MAX_GAUSSIANS, MAX_INTERSECTIONS, MAX_PIXELS,
                                           MAX_SIDE, VERSION, Header, check_format_limits,
                                           decode_quantized, encode, read_header)
from gi_jax.codec.format.streams import canonicalize

__all__ = [
    "Header", "MAGIC", "MAX_GAUSSIANS", "MAX_INTERSECTIONS", "MAX_PIXELS", "MAX_SIDE", "VERSION",
    "bits_back_report", "bits_per_pixel", "canonicalize", "check_format_limits",
    "decode_quantized", "encode", "log2_factorial", "rate_breakdown", "read_header",
    "stream_names",
]
