"""The experiments' command lines run in this process (``main(argv)`` after absl parses the
flags), or, for the one smoke test each command keeps, as a process of their own.

In this process a run shares JAX's compiled functions with every run and test before it, and
skips the interpreter's and JAX's start-up: most of what a tiny run costs. Both return a
``subprocess.CompletedProcess``, so a test reads the same exit status, stdout and stderr either
way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys

from absl import app, flags

import harness

# The tests check that each record has its render_fps, not how steady it is: 20 renders, not 0.5 s
# of them, for every fitted image.
flags.FLAGS.set_default(harness.FPS_SECONDS.name, 0.0)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = os.path.join(REPO, "experiments")

# The experiment whose module (and absl flags) is loaded: (script, module).
_loaded: list = []


def experiment_module(script: str):
  """The module of ``experiments/<script>``, its flags the only experiment's flags defined.

  The experiments define flags of the same names (--dataset, --num_gaussians, ...) in absl's one
  FLAGS, which refuses a second definition from another module: switching to another script
  first removes the flags of the one loaded before.

  Args:
    script: the file name in experiments/, e.g. ``"compress.py"``.

  Returns:
    The module (loaded afresh only when another script was loaded last).
  """
  if _loaded and _loaded[0][0] == script:
    return _loaded[0][1]
  if _loaded:
    _, module = _loaded.pop()
    for flag in list(flags.FLAGS.flags_by_module_dict().get(module.__name__, [])):
      if flag.name in flags.FLAGS:
        delattr(flags.FLAGS, flag.name)
    del sys.modules[module.__name__]
  name = "experiment_" + os.path.splitext(script)[0]
  spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, script))
  module = importlib.util.module_from_spec(spec)
  # In sys.modules while it runs: absl names the module defining each flag from there.
  sys.modules[name] = module
  spec.loader.exec_module(module)  # defines its absl flags
  _loaded.append((script, module))
  return module


def run_experiment(script: str, *args: str) -> subprocess.CompletedProcess:
  """``experiments/<script> args...`` in this process, with what absl's ``app.run`` would print
  and exit with.

  Args:
    script: the file name in experiments/.
    *args: its command-line arguments.

  Returns:
    The exit status (0; 1 for a flag, usage or run error; a SystemExit's code) and what the run
    printed. An exception that would be a traceback is raised, not returned.
  """
  module = experiment_module(script)
  stdout, stderr = io.StringIO(), io.StringIO()
  argv = [script, *args]
  saved_argv = sys.argv
  sys.argv = argv  # run_failed names the command from it
  returncode = 0
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        flags.FLAGS.unparse_flags()
        try:
          remaining = flags.FLAGS(argv)
        except flags.Error as e:  # as app.run reports a flag error
          print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
          returncode = 1
        else:
          module.main(remaining)
      except app.UsageError as e:
        print(f"{script}: {e}", file=sys.stderr)
        returncode = e.exitcode
      except SystemExit as e:
        if isinstance(e.code, str):
          print(e.code, file=sys.stderr)
          returncode = 1
        else:
          returncode = e.code or 0
  finally:
    sys.argv = saved_argv
    flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())


def run_process(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
  """``experiments/<script> args...`` as a process of its own (on the CPU), as a user runs it."""
  return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), *args], cwd=cwd,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=600)


class LazyExperiment:
  """Attribute access to ``experiments/<script>``'s module, loaded (with its flags) on each use.

  Tests that call an experiment's functions directly use one at module level
  (``quantizers = LazyExperiment("quantizers.py")``) instead of importing the script, whose flags
  would clash with another experiment's in the same test process.
  """

  def __init__(self, script: str):
    self._script = script

  def __getattr__(self, name: str):
    return getattr(experiment_module(self._script), name)
