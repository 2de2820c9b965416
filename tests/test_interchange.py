"""gi_jax.interchange: the official GaussianImage layout in and out, and the PLY of 2D Gaussians."""

import jax
import numpy as np
import pytest

import gi_jax
from gi_jax import interchange
from gi_jax.errors import InvalidInputError

H, W = 32, 48


def fitted_like(parameterization, n=120, seed=0):
  """A random set spread like a fitted one (sizes of a few pixels, colours around 0.3)."""
  g = gi_jax.init_gaussians(jax.random.key(seed), n, H, W, parameterization)
  rng = np.random.default_rng(seed)
  cov = np.asarray(g.cov_raw) + rng.normal(0, 0.8, g.cov_raw.shape).astype(np.float32)
  return gi_jax.Gaussians(g.means_raw, cov, np.asarray(g.colors) * 0.6, parameterization)


def render(g):
  return np.asarray(gi_jax.render(g, H, W, "reference"))


@pytest.mark.parametrize("parameterization", ["cholesky", "rs"])
def test_round_trip_in_own_model_is_exact(parameterization, tmp_path):
  g = fitted_like(parameterization)
  state = interchange.to_official(g)
  assert all(v.dtype == np.float32 for v in state.values())
  assert state["_xyz"].shape == (120, 2) and state["_opacity"].shape == (120, 1)
  back = interchange.from_official(state)
  assert back.parameterization == parameterization
  for name in ("means_raw", "cov_raw", "colors"):
    np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(g, name)))
  path = tmp_path / "official.npz"
  interchange.save_official(path, g)
  loaded = interchange.load_official(path)
  np.testing.assert_array_equal(render(loaded), render(g))


@pytest.mark.parametrize("source,model", [("cholesky", "rs"), ("rs", "cholesky")])
def test_round_trip_through_the_other_model_renders_the_same(source, model):
  g = fitted_like(source)
  state = interchange.to_official(g, model)
  assert ("_cholesky" in state) == (model == "cholesky")
  back = interchange.from_official(state)
  assert back.parameterization == model
  np.testing.assert_allclose(np.asarray(back.covariance), np.asarray(g.covariance),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(render(back), render(g), atol=1e-4)


def test_hand_built_official_cholesky_imports_to_expected_means_and_covariance():
  state = dict(_xyz=np.asarray([[0.0, 0.0], [np.arctanh(0.5), np.arctanh(-0.5)]], np.float32),
               _cholesky=np.asarray([[1.5, 0.0, 0.5], [0.5, 1.0, 0.0]], np.float32),
               _features_dc=np.asarray([[0.1, 0.2, 0.3], [1.0, 0.0, 0.5]], np.float32),
               _opacity=np.ones((2, 1), np.float32), background=np.ones(3, np.float32),
               bound=np.asarray([[0.5, 0.5]], np.float32),
               cholesky_bound=np.asarray([[0.5, 0.0, 0.5]], np.float32))
  g = interchange.from_official(state)
  np.testing.assert_allclose(np.asarray(g.pixel_means(H, W)), [[24, 16], [36, 8]], atol=1e-5)
  # L = [[2, 0], [0, 1]] and [[1, 0], [1, 0.5]]: Σ = L Lᵀ.
  np.testing.assert_allclose(np.asarray(g.covariance), [[4, 0, 1], [1, 1, 1.25]], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(g.colors), state["_features_dc"])


def test_hand_built_official_rs_follows_the_reference_rotation():
  # θ = 2π·sigmoid(r) = π/4; the reference's rotmat2d is [[c, s], [−s, c]]: Σ = R S² Rᵀ with
  # S = diag(2, 1) has a = c = 2.5 and b = −1.5.
  state = dict(_xyz=np.zeros((1, 2), np.float32), _scaling=np.asarray([[1.5, 0.5]], np.float32),
               _rotation=np.asarray([[np.log(1 / 7)]], np.float32),
               _features_dc=np.ones((1, 3), np.float32), _opacity=np.ones((1, 1), np.float32),
               bound=np.asarray([[0.5, 0.5]], np.float32))
  g = interchange.from_official(state)
  np.testing.assert_allclose(np.asarray(g.covariance), [[2.5, -1.5, 2.5]], atol=1e-5)
  np.testing.assert_allclose(np.asarray(g.pixel_means(H, W)), [[24, 16]])


def test_bad_checkpoints_are_refused():
  state = interchange.to_official(fitted_like("cholesky", n=4))
  with_quantizer = dict(state, **{"cholesky_quantizer.scale": np.ones(3, np.float32)})
  with pytest.raises(InvalidInputError, match="drop_quantizer_state"):
    interchange.from_official(with_quantizer)
  g = interchange.from_official(with_quantizer, drop_quantizer_state=True)
  assert g.num_gaussians == 4
  with pytest.raises(InvalidInputError, match="_opacity must be all ones"):
    interchange.from_official(dict(state, _opacity=np.full((4, 1), 0.5, np.float32)))
  with pytest.raises(InvalidInputError, match="lacks"):
    interchange.from_official({k: v for k, v in state.items() if k != "_features_dc"})
  with pytest.raises(InvalidInputError, match="unknown entries"):
    interchange.from_official(dict(state, extra=np.ones(1)))
  with pytest.raises(InvalidInputError, match="shape"):
    interchange.from_official(dict(state, _cholesky=np.ones((5, 3), np.float32)))
  with pytest.raises(InvalidInputError, match="not an official"):
    interchange.from_official({"_xyz": state["_xyz"]})
  with pytest.raises(InvalidInputError, match="model must be"):
    interchange.to_official(fitted_like("cholesky", n=4), "gaussian3d")


def test_ply_reads_back(tmp_path):
  g = fitted_like("cholesky")
  path = tmp_path / "gaussians.ply"
  interchange.save_ply(path, g, H, W)
  assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
  columns, comments = interchange.load_ply(path)
  assert list(columns) == list(interchange.PLY_FIELDS)
  assert comments == {"width": str(W), "height": str(H), "channels": "3"}
  means = np.asarray(g.pixel_means(H, W))
  np.testing.assert_allclose(columns["x"], means[:, 0], rtol=1e-6)
  np.testing.assert_allclose(columns["y"], means[:, 1], rtol=1e-6)
  assert (columns["z"] == 0).all() and (columns["opacity"] == 1).all()
  np.testing.assert_allclose(np.stack([columns[k] for k in ("red", "green", "blue")], 1),
                             np.asarray(g.colors))
  cov = np.asarray(g.covariance)
  np.testing.assert_allclose(np.stack([columns[k] for k in ("cov_xx", "cov_xy", "cov_yy")], 1),
                             cov, rtol=1e-6)
  # Scales and angle give the covariance back: R(rot) diag(scale²) R(rot)ᵀ.
  c, s = np.cos(columns["rot"]), np.sin(columns["rot"])
  s0, s1 = columns["scale_0"] ** 2, columns["scale_1"] ** 2
  rebuilt = np.stack([c * c * s0 + s * s * s1, c * s * (s0 - s1), s * s * s0 + c * c * s1], 1)
  np.testing.assert_allclose(rebuilt, cov, rtol=1e-3, atol=1e-3)
  assert (columns["scale_0"] >= columns["scale_1"]).all()
  assert ((columns["rot"] >= 0) & (columns["rot"] < np.pi)).all()


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_ply_keeps_every_channel(channels, tmp_path):
  g = fitted_like("cholesky", n=8)
  colors = np.random.default_rng(1).uniform(0, 1, (8, channels)).astype(np.float32)
  g = gi_jax.Gaussians(g.means_raw, g.cov_raw, colors, "cholesky")
  interchange.save_ply(tmp_path / "g.ply", g, H, W)
  columns, comments = interchange.load_ply(tmp_path / "g.ply")
  assert list(columns) == list(interchange.ply_field_names(channels))
  assert comments["channels"] == str(channels)
  rgb = np.stack([columns[k] for k in ("red", "green", "blue")], 1)
  np.testing.assert_array_equal(rgb, colors[:, [0, 0, 0] if channels < 3 else [0, 1, 2]])
  extra = [columns[f"channel_{i}"] for i in range(1 if channels < 3 else 3, channels)]
  held = colors[:, :1] if channels < 3 else colors[:, :3]
  np.testing.assert_array_equal(np.concatenate([held] + [e[:, None] for e in extra], 1), colors)


def test_official_layout_refuses_other_channel_counts(tmp_path):
  g = fitted_like("cholesky", n=4)
  gray = gi_jax.Gaussians(g.means_raw, g.cov_raw, g.colors[:, :1], "cholesky")
  with pytest.raises(InvalidInputError, match="RGB only"):
    interchange.save_official(tmp_path / "x.npz", gray)
  assert not list(tmp_path.iterdir())


def test_ply_refuses_bad_input(tmp_path):
  g = fitted_like("cholesky", n=4)
  with pytest.raises(InvalidInputError, match="positive integers"):
    interchange.save_ply(tmp_path / "x.ply", g, 0, W)
  assert not list(tmp_path.iterdir())
  batch = gi_jax.Gaussians(g.means_raw[None], g.cov_raw[None], g.colors[None])
  with pytest.raises(InvalidInputError, match="one Gaussian set"):
    interchange.save_ply(tmp_path / "x.ply", batch, H, W)
  (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
  with pytest.raises(InvalidInputError, match="binary little-endian"):
    interchange.load_ply(tmp_path / "bad.ply")
