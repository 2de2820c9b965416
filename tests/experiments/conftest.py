"""Fixtures the experiments' tests share."""

import pytest
from PIL import Image

from gi_jax.io import sample_image_path


@pytest.fixture
def make_dataset(tmp_path):
  """``make_dataset(size)``: a folder holding one size×size crop of the bundled kodim23 (from
  pixel (300, 200)), named as the Kodak file."""
  def make(size: int):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(sample_image_path()).convert("RGB").crop((300, 200, 300 + size, 200 + size)).save(
        folder / "kodim23.png")
    return folder
  return make


@pytest.fixture
def dataset(make_dataset):
  """A folder holding one 32×32 crop of the bundled kodim23, named as the Kodak file."""
  return make_dataset(32)
