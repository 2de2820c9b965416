"""Pallas GPU backend: the kernels behind ``render(..., backend="pallas")``: the tile lists
(:mod:`~gi_jax.pallas.tile_lists`) and the rasterizer (:mod:`~gi_jax.pallas.rasterize`).

On a GPU the kernels compile through Pallas's Triton lowering; on any other default device the
backend runs the same kernels in the Pallas interpreter, so it (slowly) works everywhere and the
CPU tests exercise the real kernel code. :mod:`gi_jax.render` lists it among its built-in backends.
"""

from gi_jax.pallas.rasterize import rasterize, rasterize_for_backend
from gi_jax.pallas.tile_lists import tile_lists, tile_lists_for_backend

__all__ = ["rasterize", "rasterize_for_backend", "tile_lists", "tile_lists_for_backend"]
