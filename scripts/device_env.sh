# Sourced by the device script (gpu_plan.sh) on a GPU machine, from the repo root:
# installs the carried wheels (scripts/device_wheels.sh; the device image lacks constriction,
# dm-pix and pypng and has no network), sets the environment, and defines `limited`.
export PYTHONPATH=${PYTHONPATH:-.} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
# Compiled executables are shared between the scripts' processes (same shapes, less compiling).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/gi_jax_jit_cache}
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  # Not fatal: without them the kernels, the bench and the tests still run (not the codec).
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gi_jax_site .whl/*.whl || echo "device_env.sh: the wheels did not install" >&2
  export PYTHONPATH=/tmp/gi_jax_site:$PYTHONPATH
fi

# `limited SECONDS COMMAND...`: runs COMMAND, interrupted after SECONDS (0: no limit). Interrupt
# rather than kill, so that Python writes what it has (compress.py saves records one by one).
limited() {
  local seconds=$1; shift
  if (( seconds > 0 )); then timeout --signal=INT --kill-after=15 "$seconds" "$@"
  else "$@"; fi
}
