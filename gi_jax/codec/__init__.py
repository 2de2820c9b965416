"""The GaussianImage codec: quantization-aware fine-tuning and a real, entropy-coded file.

Pipeline (docs/design.md §5)::

  from gi_jax import codec

  # One call, with our settings (gradient init, grid positions) or the paper's (codec.PAPER):
  encoded = codec.encode_image(image, 5000, steps=5000, finetune_steps=2000)
  data = encoded.data                                     # bytes; bpp = 8·len(data)/(H·W)
  data = codec.encode_for_bpp(image, 0.3, 5000, 2000).encoded.data  # N chosen for about 0.3 bpp
  decoded, info = codec.decode(data)                      # from the bytes alone
  with codec.decoder_pool() as pool:                      # entropy decoding in worker processes
    images = codec.decode_batch([data, data], executor=pool)  # many files, in batches
  header = codec.read_header(data)[0]                     # size, N, layout; nothing decoded
  parts = codec.rate_breakdown(data)                      # where the file's bits go

  # Stage by stage:
  fitted = gi_jax.fit(image, num_gaussians=5000, steps=50_000)
  tuned = codec.finetune(fitted, image, steps=50_000)     # fake-quantized training, keeps the best
  refined = codec.refine_colors(tuned.quantized, image)   # colours for the decoder's render
  data = codec.encode(refined.quantized, height, width)

The names here are what a user calls: the encoders (``encode_image``, ``encode_images``,
``encode_for_bpp``), the stages (``finetune``, ``finetune_batch``, ``refine_colors``, ``encode``),
the decoders (``decode``, ``decode_batch`` with ``decoder_pool``, ``read_header``,
``rate_breakdown``), the settings they take (``CodecSettings``, ``OURS``, ``PAPER``,
``QuantizerConfig``), what the one-call encoders return (``EncodedImage``, ``BppEncoding``) and
the Bjøntegaard metrics (``bd_rate``, ``bd_psnr``). Everything else is imported from the module
that owns it:

- :mod:`~gi_jax.codec.pipeline`: ``encode_image(s)``, ``CodecSettings`` with ``OURS`` and
  ``PAPER``, ``WidePositions``, ``default_steps`` and ``CPU_STEPS``.
- :mod:`~gi_jax.codec.quantize`: the quantizers put together (``QuantizerConfig``,
  ``init_quantizers``, ``quantize_gaussians``, ``to_quantized``, ``QuantizedGaussians``), with one
  module each for :mod:`~gi_jax.codec.positions` (float16 or grid positions),
  :mod:`~gi_jax.codec.covariance`, :mod:`~gi_jax.codec.uniform` (the learned uniform quantizer),
  :mod:`~gi_jax.codec.rvq` (residual VQ, ``kmeans``) and :mod:`~gi_jax.codec.ste`
  (straight-through roundings).
- :mod:`~gi_jax.codec.qat`: fine-tuning (``FinetuneResult``);
  :mod:`~gi_jax.codec.refine`: colour indices and codewords refined for the decoder's render.
- :mod:`~gi_jax.codec.format`: the ``.gimg`` file, specified in docs/file_format.md (container,
  streams, prediction, entropy models, ANS payload with bits-back ordering, ``decode_quantized``,
  ``canonicalize``, ``bits_back_report``).
- :mod:`~gi_jax.codec.render`: the decoder's render of symbols, shared by fine-tuning, refinement
  and the decoder (``render_quantized(_batch)``, ``render_capacity``, ``quantized_mse``).
- :mod:`~gi_jax.codec.decoder`: files to images, with a pixel limit and band-by-band renders; many
  files (``entropy_decode``, ``batch_groups``, ``decode_batches``).
- :mod:`~gi_jax.codec.rate`: the number of Gaussians for a target bpp (``rate_model``,
  ``OURS_RATE``); :mod:`~gi_jax.codec.rd`: BD-rate and ``quality_at_rates``;
  :mod:`~gi_jax.codec.cli`: ``gi-encode`` and ``gi-decode``.
"""

from gi_jax.codec.decoder import decode, decode_batch, decoder_pool
from gi_jax.codec.format import encode, rate_breakdown, read_header
from gi_jax.codec.pipeline import (OURS, PAPER, CodecSettings, EncodedImage, encode_image,
                                   encode_images)
from gi_jax.codec.qat import finetune, finetune_batch
from gi_jax.codec.quantize import QuantizerConfig
from gi_jax.codec.rate import BppEncoding, encode_for_bpp
from gi_jax.codec.rd import bd_psnr, bd_rate
from gi_jax.codec.refine import refine_colors

__all__ = [
    "BppEncoding", "CodecSettings", "EncodedImage", "OURS", "PAPER", "QuantizerConfig", "bd_psnr",
    "bd_rate", "decode", "decode_batch", "decoder_pool", "encode", "encode_for_bpp", "encode_image",
    "encode_images", "finetune", "finetune_batch", "rate_breakdown", "read_header",
    "refine_colors",
]
