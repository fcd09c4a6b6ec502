"""Optimizer-step temporaries: every registry entry's rule, on every code path it has on the CPU,
against a real step's extra allocations (torch's profiler on real CPU tensors, see
tests/allocations.py, plus the scratch SMMF keeps between steps; tolerance -2% / +10%, the rules
ignore 0-d scalars). The step measured is the one the rule describes (``peak_step``: GaLore's SVD
refresh, SOAP's eigenbasis refresh, COAP's projection update).

Two kinds of step run where the profiler's tensor-level view cannot see: bitsandbytes' CPU step (a
custom operator that dequantizes inside) and torchao's compiled step. bitsandbytes' rule is checked
against the RSS growth of a real step in a subprocess here; torchao's, whose compilation takes
minutes on two cores, by ``bench/bench_zoo_temporaries.py`` (reports/benchmarks.md)."""

import pytest
import torch

from allocations import tensor_peak
from smmf_plan.memory import optimizer_step
from smmf_plan.optimizers import ALL_IDS, FAMILIES, parse
from smmf_plan.optimizers.base import DEVICES
from smmf_plan.shapes import ParamSpec

SETS = {
    "matrix-first": [(512, 256), (256,), (64, 64)],
    "conv-then-vector": [(64, 32, 3, 3), (64,), (1000, 100)],
    "vector": [(4096,)],
}
#: every variant compared by default, plus the variants whose rule differs (coupled weight decay
#: adds a temporary to Adam; SM3 without momentum keeps its updates; SGD's weight decay and
#: Nesterov copy the gradient; GaLore's and APOLLO's low ranks; AdamW's fused kernel in Muon;
#: SOAP's preconditioned vectors, up to 1024 long: a 4096×4096 eigendecomposition would take a
#: minute; the authors' Schedule-Free). Entries no package registry has (COAP, Adalayer) cannot
#: run here; their layouts are checked against their sources in test_optimizers_from_source.py.
FROM_SOURCE = {"coap", "adalayer"}
_IDS = ALL_IDS + ("adam:weight_decay=0.01", "sm3:momentum=0",
                  "sgd:momentum=0.9,nesterov=true,weight_decay=0.1", "sgd:weight_decay=0.1",
                  "galore:rank=8", "apollo:rank=8",
                  "soap:precondition_1d=true,max_precondition_dim=1024",
                  "schedulefree-adamw:impl=schedulefree", "signum:momentum=0")


def _refresh_soon(oid):
    """A periodic refresh every other step (the rules do not depend on the gap; 200 steps before
    the refresh would only make the test slow)."""
    if "update_proj_gap" in FAMILIES[parse(oid).family].options and "update_proj_gap" not in oid:
        return oid + ("," if ":" in oid else ":") + "update_proj_gap=2"
    return oid


IDS = tuple(_refresh_soon(i) for i in _IDS if parse(i).family not in FROM_SOURCE)
#: (id, path) whose step runs inside a custom operator or a compiled kernel (see the docstring).
OPAQUE = {("adamw8bit", "for-loop"), ("adamw8bit:impl=torchao", "fused"), ("adamw4bit", "fused"),
          ("adamwfp8", "fused")}


def cpu_paths(oid):
    return parse(oid).paths["cpu"]


CASES = [(oid, path) for oid in IDS for path in cpu_paths(oid) if (oid, path) not in OPAQUE]


def measured_step_extra(oid, shapes, path=None, **hyper):
    return _measured_step_extra(oid, shapes, path=path, **hyper)


def _measured_step_extra(oid, shapes, **build):
    """The tracked peak of the step the rule describes (:attr:`OptimizerInfo.peak_step`)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    variant = parse(oid)
    opt = variant.build(list(zip(specs_of(shapes), params)), **build)
    steps = variant.info.peak_step(variant.options)
    for i in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        if i < steps - 1:
            opt.step()
            continue
        # what the step allocates beyond parameters, gradients and state, plus the scratch SMMF
        # allocated in an earlier step and keeps (alive during this one, not in the window)
        return tensor_peak(opt.step) + getattr(opt, "workspace_bytes", lambda: 0)()


def specs_of(shapes):
    """Specs of the sets: the 2-D ones stand for Linear weights (low-rank optimizers treat them)."""
    return [ParamSpec(f"p{i}", s, linear=len(s) == 2) for i, s in enumerate(shapes)]


def _specs(which):
    return specs_of(SETS[which])


def test_every_code_path_of_every_entry_has_a_rule():
    for info in FAMILIES.values():
        assert set(info.paths) == set(DEVICES), info.id
        for device, paths in info.paths.items():
            assert paths and len(set(paths)) == len(paths), (info.id, device)
            for path in paths:
                assert path in info.temporaries, (info.id, device, path)
        assert set(info.temporaries) == {p for ps in info.paths.values() for p in ps}, info.id
        # a path the implementation is asked for by argument must be one it has
        assert set(info.path_args) <= set(info.temporaries), info.id


@pytest.mark.parametrize("oid, path", CASES)
@pytest.mark.parametrize("which", list(SETS))
def test_rule_matches_a_real_step(oid, path, which):
    real = measured_step_extra(oid, SETS[which], path)
    rule = parse(oid).step_temp_bytes(_specs(which), path=path)
    if parse(oid).family == "smmf" and path == "fused":
        # the fused C++ kernel allocates nothing but the column sums it keeps: exact, for the
        # thread count it ran with (the plan assumes one thread per CPU)
        from smmf_plan.optimizers.smmf import fused_cpu_temp_bytes

        exact = fused_cpu_temp_bytes(parse(oid).options, _specs(which), 1, threads=torch.get_num_threads())
        assert exact == real > 0, (oid, which, exact, real)
        return
    # the rules leave out the step's few 0-d scalars (up to 16 B here), which the profiler sees
    assert 0.98 * (real - 16) <= rule <= 1.10 * real, (oid, path, which, rule, real)


@pytest.mark.parametrize("which", list(SETS))
def test_foreach_adam_holds_exactly_one_copy_of_the_parameters(which):
    real = measured_step_extra("adam", SETS[which], "foreach")
    copy = sum(4 * n for n in (torch.Size(s).numel() for s in SETS[which]))
    assert copy <= real <= copy + 16  # and the step's few 0-d scalars, which the rule ignores
    assert parse("adam").step_temp_bytes(_specs(which), path="foreach") == copy


def test_default_path_follows_the_allocator():
    specs = _specs("matrix-first")
    adam = parse("adam")
    assert adam.code_path("cpu") == adam.code_path("raw") == "for-loop"
    assert adam.code_path("cuda") == "foreach"
    assert parse("adam:fused=true").code_path("cuda") == "fused"
    assert parse("adam:fused=true").step_temp_bytes(specs, "cuda") == 0
    # foreach on CUDA: one copy of the 512-B-rounded parameters
    assert adam.step_temp_bytes(specs, "cuda") == 4 * (512 * 256 + 256 + 64 * 64)
    with pytest.raises(ValueError, match="no foreach code path"):
        parse("came").step_temp_bytes(specs, path="foreach")


def test_smmf_plans_with_its_fused_kernels():
    """SMMF's default path is its fused kernel on both devices; its CPU rule follows the thread
    tasks (a tall-skinny (250013, 4) splits between threads like any other) and its CUDA rule the
    Triton kernel's column partials (checked against a real step in the accuracy tests)."""
    from smmf_plan.optimizers.smmf import cpu_scratch_elems, fused_cpu_temp_bytes

    smmf = parse("smmf")
    assert smmf.code_path("cpu") == smmf.code_path("cuda") == "fused"
    specs = [ParamSpec("w", (4, 250013)), ParamSpec("b", (64,))]
    assert fused_cpu_temp_bytes(smmf.options, specs, 1, threads=4) == 8 * cpu_scratch_elems(
        [(250013, 4), (8, 8)], 4) == 8 * 3 * 16 * 16  # 4 tasks per thread, m̂ = 4 padded to 16
    real = measured_step_extra("smmf", [(4, 250013), (64,)], "fused")
    assert real == fused_cpu_temp_bytes(smmf.options, specs, 1, threads=torch.get_num_threads())
    # Triton: 2 moments x (7813 tasks of 32 rows x (4 + 1) + 1 task x (8 + 1)) fp32, and a flag
    # byte per element of the m = 4 parameter (not a multiple of 8), each rounded to 512 B
    floats, flags = 2 * (7813 * 5 + 1 * 9), 250013 * 4
    assert smmf.step_temp_bytes(specs, "cuda") == 512 * -(-4 * floats // 512) + 512 * -(-flags // 512)


def test_frozen_parameters_have_no_temporaries():
    specs = [ParamSpec("w", (1000, 1000), trainable=False), ParamSpec("b", (10,))]
    assert parse("adam").step_temp_bytes(specs) == 2 * 40


@pytest.mark.parametrize("shape, dtype", [((1024, 1024), "float32"), ((2048, 512), "bfloat16"),
                                          ((4000,), "float32")])
def test_bitsandbytes_cpu_rule_matches_the_rss_of_a_real_step(shape, dtype):
    """bitsandbytes' CPU step dequantizes inside a custom operator: measured by RSS growth
    (tolerance: -2% / +10% plus 2 MiB of page and allocator granularity)."""
    from smmf_plan.measure import step_rss_extra

    real = step_rss_extra("adamw8bit", shape, dtype)
    rule = parse("adamw8bit").step_temp_bytes([ParamSpec("weight", shape, dtype)], path="for-loop")
    assert 0.98 * real - 2 * 2**20 <= rule <= 1.10 * real + 2 * 2**20, (shape, dtype, rule, real)


def test_the_replayed_temporaries_of_a_tiny_parameter_are_its_rounded_blocks():
    """The allocator replay gets a parameter's step temporaries as blocks of its rounded size: a
    1-element fp16 bias and a 3x5 fp32 weight each get Adam's one 512-B CUDA temporary (foreach),
    two 64-B ones on CPU (for-loop) - not 256 blocks of 2 B that the CUDA allocator rounds to
    512 B each (128 KiB where the step allocates 512 B)."""
    specs = [ParamSpec("b", (1,), "float16"), ParamSpec("w", (3, 5), "float32")]
    adam = parse("adam")
    assert optimizer_step(adam, specs, "cuda").temps == ((512,), (512,))
    assert optimizer_step(adam, specs, "cpu").temps == ((64, 64), (64, 64))
