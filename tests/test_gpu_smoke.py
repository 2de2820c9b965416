"""scripts/gpu_smoke.py, the first check of a GPU lease, runs and passes here (interpreted kernels)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_smoke_passes_on_the_cpu():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_smoke.py"), "300"],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.rstrip().startswith("devices:") and proc.stdout.rstrip().endswith(": ok")
