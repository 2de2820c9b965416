"""Pallas GPU backend: importing this package registers ``render(..., backend="pallas")``.

On a GPU the kernels compile through Pallas's Triton lowering; on any other default device the
registered function runs the same kernels in the Pallas interpreter, so the backend (slowly) works
everywhere and the CPU tests exercise the real kernel code.
"""

from gi_jax.pallas.rasterize import rasterize, rasterize_for_backend
# `from gi_jax import render` gives the re-exported function; the registry is in the module.
from gi_jax.render import register_backend as _register_backend

_register_backend("pallas", rasterize_for_backend)

__all__ = ["rasterize", "rasterize_for_backend"]
