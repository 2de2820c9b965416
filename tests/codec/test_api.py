"""gi_jax.codec's public names: exactly what a user calls, each documented, and the package
docstring's example calling only those."""

import ast
import importlib
import inspect
import re
import types

from gi_jax import codec

PUBLIC = {
    # encoders, one call: fit -> fine-tune -> refine -> file
    "encode_image", "encode_images", "encode_for_bpp",
    # the stages, for a pipeline of one's own
    "finetune", "finetune_batch", "refine_colors", "encode",
    # decoders and a file's facts
    "decode", "decode_batch", "decoder_pool", "read_header", "rate_breakdown",
    # the settings the encoders take
    "CodecSettings", "OURS", "PAPER", "QuantizerConfig",
    # what the one-call encoders return
    "EncodedImage", "BppEncoding",
    # comparing codecs
    "bd_rate", "bd_psnr",
}


def test_public_names_are_exactly_the_list():
  assert set(codec.__all__) == PUBLIC and len(codec.__all__) == len(PUBLIC)
  # Nothing else is reachable as a public attribute but the submodules the pieces live in.
  exported = {name for name, value in vars(codec).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
  assert exported == PUBLIC
  namespace = {}
  exec("from gi_jax.codec import *", namespace)
  assert set(namespace) - {"__builtins__"} == PUBLIC


def test_each_public_name_is_documented():
  for name in PUBLIC:
    value = getattr(codec, name)
    if isinstance(value, codec.CodecSettings):
      # A settings instance carries its class's docstring: the package docstring says what it is.
      assert re.search(rf"``{name}``", codec.__doc__), name
    else:
      assert inspect.getdoc(value), name
      assert value.__module__.startswith("gi_jax.codec."), name


def _example_code() -> str:
  """The package docstring's indented example blocks, dedented."""
  blocks = re.findall(r"::\n\n((?:  .*\n|\n)+)", codec.__doc__)
  assert blocks
  return "\n".join(inspect.cleandoc(block) for block in blocks)


def test_docstring_example_calls_public_names_only():
  tree = ast.parse(_example_code())
  used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
          and isinstance(node.value, ast.Name) and node.value.id == "codec"}
  assert used and used <= PUBLIC, used - PUBLIC
  # The names the docstring lists as public are the public ones, each in double backquotes.
  listed = set(re.findall(r"``(\w+)``", codec.__doc__.split("Everything else")[0]))
  assert PUBLIC <= listed
  # Each bullet on where the rest lives names modules that exist and hold the names it gives.
  rest = codec.__doc__.split("Everything else")[1]
  for bullet in re.split(r"\n- ", rest)[1:]:
    modules = [importlib.import_module(f"gi_jax.codec.{m}")
               for m in re.findall(r":mod:`~gi_jax\.codec\.([\w.]+)`", bullet)]
    assert modules, bullet
    for name in re.findall(r"``(\w+)``", bullet):
      assert any(hasattr(m, name) for m in modules), (name, bullet)


def test_example_calls_match_their_signatures():
  # Each call in the example binds to the function it names (no slow work: nothing is run).
  tree = ast.parse(_example_code())
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "codec"):
      signature = inspect.signature(getattr(codec, node.func.attr))
      signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
