"""gi_jax: 2D Gaussian splatting image representation and compression in JAX (GaussianImage)."""

from gi_jax import errors, io, metrics, optim, recipes
from gi_jax.batch import fit_batch
from gi_jax.binning import Binning, TileGrid, bin_gaussians
from gi_jax.dataset import fit_dataset
from gi_jax.fitting import BinReuse, FitResult, fit
from gi_jax.gaussians import Gaussians, init_gaussians
from gi_jax.recipes import Recipe
from gi_jax.render import available_backends, register_backend, render, render_with_count

__all__ = [
    "BinReuse", "Binning", "FitResult", "Gaussians", "Recipe", "TileGrid", "available_backends",
    "bin_gaussians", "errors", "fit", "fit_batch",
    "fit_dataset", "init_gaussians", "io", "metrics", "optim", "recipes", "register_backend",
    "render", "render_with_count",
]
__version__ = "0.1.0"
