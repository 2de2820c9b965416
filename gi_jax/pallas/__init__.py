"""Pallas GPU backend: the kernels behind ``render(..., backend="pallas")``.

On a GPU the kernels compile through Pallas's Triton lowering; on any other default device the
backend runs the same kernels in the Pallas interpreter, so it (slowly) works everywhere and the
CPU tests exercise the real kernel code. :mod:`gi_jax.render` lists it among its built-in backends.
"""

from gi_jax.pallas.rasterize import rasterize, rasterize_for_backend

__all__ = ["rasterize", "rasterize_for_backend"]
