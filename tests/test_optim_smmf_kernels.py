"""How SMMF picks its kernel (``fused=None|True|False``, the ``SMMF_PLAN_KERNEL`` override, what
happens without a compiler), the fused CPU kernel's two code paths (AVX2 and portable) giving
bit-identical results, half precision through the fused kernel, and a step under
``FakeTensorMode`` and ``torch.compile`` (no data-dependent Python branches)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from smmf_plan.optim import SMMF, _cpp
from smmf_plan.optimizers.smmf import smmf_state


def _kernel_of(opt, p):
    return opt._kernel(opt.param_groups[0], p)


def test_fused_argument_picks_the_kernel(monkeypatch):
    monkeypatch.delenv("SMMF_PLAN_KERNEL", raising=False)
    p32, p64 = torch.nn.Parameter(torch.zeros(8, 8)), torch.nn.Parameter(torch.zeros(8, 8, dtype=torch.float64))
    bf = torch.nn.Parameter(torch.zeros(8, 8, dtype=torch.bfloat16))
    auto = SMMF([p32, p64, bf])
    assert [_kernel_of(auto, p) for p in (p32, p64, bf)] == ["cpu", "eager", "cpu"]
    assert _kernel_of(SMMF([p32], fused=True), p32) == "cpu"
    assert _kernel_of(SMMF([p32], fused=False), p32) == "eager"
    with pytest.raises(RuntimeError, match="fused=True.*float64.*fused=False"):
        SMMF([p64], fused=True)  # refused at construction, like torch's fused Adam
    with pytest.raises(ValueError, match="fused"):
        SMMF([p32], fused="yes")


def test_environment_overrides_only_the_automatic_choice(monkeypatch):
    p = torch.nn.Parameter(torch.zeros(8, 8))
    monkeypatch.setenv("SMMF_PLAN_KERNEL", "eager")
    assert _kernel_of(SMMF([p]), p) == "eager"
    assert _kernel_of(SMMF([p], fused=True), p) == "cpu"  # an explicit argument wins
    for value in ("fused", "cpp"):  # cpp: the spelling of smmf-plan 0.1
        monkeypatch.setenv("SMMF_PLAN_KERNEL", value)
        assert _kernel_of(SMMF([p]), p) == "cpu"
    assert _kernel_of(SMMF([p], fused=False), p) == "eager"
    monkeypatch.setenv("SMMF_PLAN_KERNEL", "cuda")
    with pytest.raises(ValueError, match="SMMF_PLAN_KERNEL must be auto, eager or fused"):
        SMMF([p])


NO_COMPILER = r"""
import warnings, torch
from smmf_plan.optim import SMMF
p = torch.nn.Parameter(torch.ones(4, 4)); p.grad = torch.ones(4, 4)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    opt = SMMF([p]); opt.step()
print("auto:", opt._kernel(opt.param_groups[0], p), [str(w.message) for w in caught])
try:
    SMMF([p], fused=True)
except RuntimeError as exc:
    print("required:", exc)
"""


def test_without_a_compiler_falls_back_or_says_why(tmp_path):
    """No C++ compiler (and an empty extension cache): ``fused=None`` warns once and runs the
    eager kernels; ``fused=True`` is a one-line error naming the compiler and the way out."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop("SMMF_PLAN_KERNEL", None)
    out = subprocess.run([sys.executable, "-c", NO_COMPILER], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    auto, required = out.stdout.strip().splitlines()
    assert auto.startswith("auto: eager") and "no C++ compiler" in auto and "slower" in auto
    assert required.startswith("required: SMMF(fused=True): no fused kernel for CPU parameters: "
                               "no C++ compiler") and "fused=False" in required
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").rglob("*.so"))


# m̂ % 8: (1, 1) 1, (7, 1) 1, (17, 13) 5, (40, 25) 1, (48, 36) 4, (2053, 2) 2, (123, 100) 4,
# (256, 256) 0, (13, 8) 0 with an odd row count, (1025, 1024) 0 split between threads unevenly
SHAPES = [(), (7,), (13, 17), (1000,), (64, 3, 3, 3), (2, 2053), (300, 41), (256, 256), (104,), (1025, 1024)]


def _trajectory(dtype, vector, steps=3, **kw):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
    opt = SMMF(params, lr=1e-2, fused=True, **kw)
    old = _cpp.VECTOR
    _cpp.VECTOR = vector
    try:
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
    finally:
        _cpp.VECTOR = old
    return params, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", [{}, dict(sign="bool"), dict(beta=None), dict(weight_decay=0.1),
                                dict(weight_decay=0.1, weight_decay_mode="adam")],
                         ids=["packed", "bool", "beta_none", "adamw", "adam"])
def test_avx2_and_portable_paths_are_bit_identical(dtype, kw):
    """Same IEEE operations in the same order (no FMA contraction), so where the CPU has AVX2 the
    vector path and the portable path agree bit for bit: parameters, factors and sign bits; odd
    widths (row tails), m̂ = 1, and parameters split between threads."""
    a, oa = _trajectory(dtype, True, **kw)
    b, ob = _trajectory(dtype, False, **kw)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        for k, v in oa.state[x].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, ob.state[y][k]), k


def test_many_threads_split_a_parameter_into_whole_row_groups(monkeypatch):
    """With many threads a large parameter is split into as many tasks as it has 16-row groups
    (the kernel's column-flush groups): (2600, 2600) on 64 threads is 163 tasks (8-row groups
    would have asked for 206, which the kernel refuses). The step equals the one-task step to
    rounding (column partials are added in another order) and keeps the scratch the planner's
    rule sizes for 64 threads."""
    from smmf_plan.optimizers.smmf import cpu_scratch_elems, cpu_tasks

    assert cpu_tasks(2600, 2600, 64) == 163 and cpu_tasks(2600, 2600, 1) == 4
    gen = torch.Generator().manual_seed(0)
    start, grad = torch.randn(2600, 2600, generator=gen), torch.randn(2600, 2600, generator=gen)
    runs = []
    for threads in (64, 1):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        p = torch.nn.Parameter(start.clone())
        opt = SMMF([p], lr=1e-2, fused=True)
        for _ in range(2):
            p.grad = grad.clone()
            opt.step()
        runs.append((p, opt))
        assert opt.workspace_bytes() == 8 * cpu_scratch_elems([(2600, 2600)], threads)
    (p64, o64), (p1, o1) = runs
    torch.testing.assert_close(p64, p1, rtol=0, atol=1e-6)
    for k in ("row_v", "col_v", "row_m", "col_m"):
        torch.testing.assert_close(o64.state[p64][k], o1.state[p1][k], rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_takes_the_fused_kernel(dtype):
    """bf16/fp16 parameters run through the fused kernel with fp32 arithmetic and fp32 factors,
    close to the eager kernel (which rounds decoupled decay separately)."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) * 0.1 for s in [(64, 3, 3, 3), (300, 41), (1000,)]]
    fixed = [torch.randn(x.shape, generator=gen).sign() for x in start]
    runs = []
    for fused in (True, False):
        ps = [torch.nn.Parameter(x.to(dtype)) for x in start]
        opt = SMMF(ps, lr=1e-2, weight_decay=0.01, fused=fused)
        assert _kernel_of(opt, ps[0]) == ("cpu" if fused else "eager")
        g2 = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p, f in zip(ps, fixed):
                p.grad = (f * (0.5 + torch.rand(f.shape, generator=g2))).to(dtype)
            opt.step()
        for p in ps:
            assert p.dtype == dtype and all(opt.state[p][k].dtype == torch.float32
                                            for k in ("row_m", "col_m", "row_v", "col_v"))
        runs.append(ps)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    for f, e, x in zip(*runs, start):
        assert not torch.equal(f.float(), x.to(dtype).float())
        torch.testing.assert_close(f.float(), e.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel", ["eager", "cpu", "triton"])
def test_step_under_fake_tensor_mode(kernel):
    """Under FakeTensorMode (FSDP's memory trackers) a step runs on every kernel (the fused ones
    allocate their scratch and skip the arithmetic) and the state is the planner's layout."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    shapes = [(64, 3, 3, 3), (1000,), (13, 17), ()]
    with FakeTensorMode():
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape)
        opt = SMMF(params, fused=kernel != "eager", weight_decay=0.1)
        if kernel == "triton":
            opt._force_kernel = "triton"
        opt.step()
        opt.step()
    for p, s in zip(params, shapes):
        want = {t.name: (t.shape, t.dtype) for t in smmf_state(s, "float32")}
        got = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
               for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        assert got == want
        assert all(isinstance(v, FakeTensor) for v in opt.state[p].values() if isinstance(v, torch.Tensor))
    assert opt.workspace_bytes() == 0  # fake scratch is kept apart from the real one
    assert opt._workspaces[True].nbytes() > 0


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a .functools.lru_cache")
def test_eager_step_under_torch_compile():
    """The eager step traces into one graph (``fullgraph=True``: no data-dependent Python branch)
    and computes what the eager step computes."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 20, generator=gen)
    a, b = torch.nn.Parameter(x.clone()), torch.nn.Parameter(x.clone())
    eager, compiled = SMMF([a], lr=1e-2, fused=False), SMMF([b], lr=1e-2, fused=False)
    step = torch.compile(compiled.step, backend="aot_eager", fullgraph=True)
    fixed = torch.randn(24, 20, generator=gen).sign()
    for _ in range(2):
        g = fixed * (0.5 + torch.rand(24, 20, generator=gen))
        a.grad, b.grad = g, g.clone()
        eager.step()
        step()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a, x)
    torch._dynamo.reset()
