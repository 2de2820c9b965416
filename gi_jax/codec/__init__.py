"""The GaussianImage codec: quantization-aware fine-tuning and a real, entropy-coded file.

Pipeline (docs/design.md §5)::

  fitted = gi_jax.fit(image, num_gaussians=5000, steps=50_000)
  tuned = codec.finetune(fitted, image, steps=50_000)     # fake-quantized training, keeps the best
  data = codec.encode(tuned.quantized, height, width)     # bytes; bpp = 8·len(data)/(H·W)
  decoded, info = codec.decode(data)                      # from the bytes alone

  # or in one call, with our settings (gradient init, grid positions) or the paper's:
  data = codec.encode_image(image, 5000, steps=5000, finetune_steps=2000).data

Pieces: :mod:`~gi_jax.codec.pipeline` (``encode_image``, :data:`OURS` and :data:`PAPER`
settings), :mod:`~gi_jax.codec.quantize` (float16 or grid positions, learned 6-bit covariance
quantizer, residual VQ or learned uniform colours, straight-through estimators),
:mod:`~gi_jax.codec.qat` (fine-tuning), :mod:`~gi_jax.codec.refine` (colour indices and
codewords refined for the decoder's render), :mod:`~gi_jax.codec.format` (the ``.gimg`` file,
specified in docs/file_format.md: container, streams, prediction, entropy models, ANS payload with
bits-back ordering, a file's rate breakdown),
:mod:`~gi_jax.codec.render` (the decoder's render of symbols, shared by fine-tuning, refinement
and the decoder), :mod:`~gi_jax.codec.decoder` (files to images; many files in batches),
:mod:`~gi_jax.codec.rate` (the number of Gaussians for a target bpp; ``encode_for_bpp``),
:mod:`~gi_jax.codec.rd` (BD-rate) and :mod:`~gi_jax.codec.cli` (``gi-encode``, ``gi-decode``).
"""

from gi_jax.codec.qat import FinetuneResult, finetune, finetune_batch
from gi_jax.codec.pipeline import (CPU_STEPS, OURS, PAPER, Candidate, CodecSettings,
                                   EncodedImage, WidePositions, default_steps,
                                   encode_image, encode_images, override_wide)
from gi_jax.codec.format import (MAGIC, VERSION, Header, bits_back_report, bits_per_pixel,
                                 canonicalize, decode_quantized, encode, log2_factorial,
                                 rate_breakdown, read_header)
from gi_jax.codec.decoder import (batch_groups, decode, decode_batch, decoder_pool, entropy_decode)
from gi_jax.codec.render import (quantized_mse, render_capacity, render_decoded,
                                 render_decoded_batch, render_quantized, render_quantized_batch)
from gi_jax.codec.positions import grid_codes, grid_means_raw, grid_ste
from gi_jax.codec.quantize import (QuantizedGaussians, QuantizerConfig, Quantizers,
                                   fixed_length_bits, init_quantizers, quantize_gaussians,
                                   to_quantized)
from gi_jax.codec.rvq import (ResidualVQ, kmeans, rvq_dequantize, rvq_ema_update, rvq_indices,
                              rvq_init, rvq_quantize)
from gi_jax.codec.ste import half_ste, round_ste, straight_through
from gi_jax.codec.uniform import (UniformQuantizer, uniform_codes, uniform_dequantize, uniform_init,
                                  uniform_quantize)
from gi_jax.codec.rate import (OURS_RATE, BppEncoding, RateModel, RatePass, encode_for_bpp,
                               rate_model)
from gi_jax.codec.rd import bd_psnr, bd_rate, quality_at_rates
from gi_jax.codec.refine import RefineResult, refine_colors

__all__ = [
    "BppEncoding", "CPU_STEPS", "Candidate", "CodecSettings", "EncodedImage", "FinetuneResult",
    "Header", "MAGIC",
    "OURS", "OURS_RATE", "PAPER", "QuantizedGaussians", "QuantizerConfig", "Quantizers",
    "RateModel", "RatePass", "RefineResult", "WidePositions",
    "ResidualVQ", "UniformQuantizer", "VERSION", "batch_groups", "bd_psnr",
    "bd_rate",
    "bits_back_report", "bits_per_pixel", "canonicalize", "decode", "decode_batch",
    "decode_quantized", "decoder_pool", "default_steps", "encode", "encode_for_bpp", "encode_image",
    "encode_images",
    "entropy_decode", "finetune", "finetune_batch", "fixed_length_bits", "grid_codes",
    "grid_means_raw", "grid_ste", "half_ste", "init_quantizers", "kmeans", "log2_factorial",
    "override_wide",
    "quality_at_rates", "quantize_gaussians", "quantized_mse", "rate_breakdown", "rate_model",
    "read_header",
    "refine_colors",
    "render_capacity", "render_decoded", "render_decoded_batch", "render_quantized",
    "render_quantized_batch",
    "round_ste", "rvq_dequantize", "rvq_ema_update", "rvq_indices", "rvq_init", "rvq_quantize",
    "straight_through", "to_quantized", "uniform_codes", "uniform_dequantize", "uniform_init",
    "uniform_quantize",
]
