"""experiments/kernel_count.py: kernels read from an optimized HLO module's text.

Compiling for an H100 needs JAX's CUDA plugin, which the test machines lack; the counting is
checked on a module written out here in the form XLA:GPU prints, and the compile where the plugin
is installed.
"""

import pytest

import kernel_count

# A device loop of steps inside a loop of binnings, as a fit's device call is compiled: fused
# computations and reduction regions launch nothing of their own.
_MODULE = """\
HloModule jit_fit, is_scheduled=true

%fused_add (param_0: s32[]) -> s32[] {
  %param_0 = s32[] parameter(0)
  %constant_1 = s32[] constant(1)
  ROOT %add.1 = s32[] add(%param_0, %constant_1)
}

%region_0 (a: s32[], b: s32[]) -> pred[] {
  %a = s32[] parameter(0)
  %b = s32[] parameter(1)
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

%fused_sort (p: s32[64]) -> s32[64] {
  %p = s32[64]{0} parameter(0)
  ROOT %sort.1 = s32[64]{0} sort(%p), dimensions={0}, to_apply=%region_0
}

%inner_body (state: (s32[], f32[8])) -> (s32[], f32[8]) {
  %state = (s32[], f32[8]) parameter(0)
  %gte.0 = s32[] get-tuple-element(%state), index=0
  %gte.1 = f32[8]{0} get-tuple-element(%state), index=1
  %loop_add_fusion = s32[] fusion(%gte.0), kind=kLoop, calls=%fused_add
  %pallas_call.1 = f32[8]{0} custom-call(%gte.1), custom_call_target="__gpu$xla.gpu.triton"
  %copy.1 = f32[8]{0} copy(%pallas_call.1)
  ROOT %tuple.1 = (s32[], f32[8]) tuple(%loop_add_fusion, %copy.1)
}

%inner_cond (state: (s32[], f32[8])) -> pred[] {
  %state = (s32[], f32[8]) parameter(0)
  %gte.2 = s32[] get-tuple-element(%state), index=0
  ROOT %fusion.lt = pred[] fusion(%gte.2), kind=kLoop, calls=%fused_add
}

%outer_body (state: (s32[], f32[8])) -> (s32[], f32[8]) {
  %state = (s32[], f32[8]) parameter(0)
  %gte.3 = s32[] get-tuple-element(%state), index=0
  %sorted = s32[64]{0} fusion(%gte.3), kind=kCustom, calls=%fused_sort
  ROOT %while.inner = (s32[], f32[8]) while(%state), condition=%inner_cond, body=%inner_body
}

%outer_cond (state: (s32[], f32[8])) -> pred[] {
  %state = (s32[], f32[8]) parameter(0)
  %gte.4 = s32[] get-tuple-element(%state), index=0
  ROOT %fusion.lt.1 = pred[] fusion(%gte.4), kind=kLoop, calls=%fused_add
}

ENTRY %main (p0: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p0 = (s32[], f32[8]) parameter(0)
  %constant_0 = s32[] constant(0)
  ROOT %while.outer = (s32[], f32[8]) while(%p0), condition=%outer_cond, body=%outer_body
}
"""


def test_launches_counts_each_loop_level_and_skips_fused_computations():
  result = kernel_count.launches(_MODULE)
  assert result.total == 0  # the entry only starts the loop
  ((outer_body, outer_cond),) = result.loops
  assert dict(outer_body.kernels) == {"sort": 1} and outer_cond.total == 1
  body, cond = result.innermost()
  assert dict(body.kernels) == {"fusion": 1, "triton": 1, "copy": 1} and cond.total == 1
  assert kernel_count.summary(result) == dict(kernels=6, loop_kernels=4, loop_sorts=0)


def test_launches_rejects_text_that_is_not_a_module():
  with pytest.raises(ValueError, match="ENTRY"):
    kernel_count.launches("HloModule nothing\n")


def test_compiles_for_an_h100_where_the_cuda_plugin_is_installed():
  try:
    device = kernel_count.h100_device()
  except kernel_count.Unavailable as e:
    assert "jax-cuda12-plugin" in str(e)  # the message says how to get it
    pytest.skip("JAX's CUDA plugin is not installed")
  import jax.numpy as jnp
  compiled = kernel_count.compile_for(device, lambda x: jnp.sum(jnp.sin(x) * x),
                                      (jnp.zeros(1024, jnp.float32),))
  assert 1 <= kernel_count.summary(kernel_count.launches(compiled.as_text()))["kernels"] <= 3
  assert 4096 <= kernel_count.planned_bytes(compiled) < 2**20  # the argument at least
