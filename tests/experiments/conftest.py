"""Fixtures the experiments' tests share."""

import pytest
from PIL import Image

from gi_jax.io import sample_image_path


@pytest.fixture
def dataset(tmp_path):
  """A folder holding one 32×32 crop of the bundled kodim23, named as the Kodak file."""
  folder = tmp_path / "images"
  folder.mkdir()
  Image.open(sample_image_path()).convert("RGB").crop((300, 200, 332, 232)).save(
      folder / "kodim23.png")
  return folder
