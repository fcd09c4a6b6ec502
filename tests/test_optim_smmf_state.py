"""SMMF's real state equals the planner's prediction (names, shapes, dtypes, bytes) per parameter,
is allocated once, and survives ``state_dict``/``load_state_dict`` bit for bit with its dtypes."""

from __future__ import annotations

import io

import pytest
import torch

from smmf_plan.measure import state_bytes
from smmf_plan.optim import SMMF
from smmf_plan.optimizers import parse
from smmf_plan.optimizers.smmf import smmf_state
from smmf_plan.shapes import ParamSpec

SHAPES = [(), (1,), (7,), (1000003,), (1024,), (1, 768), (13, 17), (1009, 1013), (4, 5, 6),
          (32, 1, 3, 3), (256, 64, 1, 1), (97, 3, 3, 3), (2, 3, 4, 5, 6), (0, 5)]
VARIANTS = ["smmf", "smmf:sign=bool", "smmf:beta=none", "smmf:vector_reshape=false",
            "smmf:sign=bool,vector_reshape=false"]


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_equal_planner(variant, dtype):
    layout = parse(variant)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
    opt = layout.build(params)
    assert isinstance(opt, SMMF)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    opt.step()
    for p, shape in zip(params, SHAPES):
        spec = ParamSpec("p", shape, _dtype_name(dtype))
        assert state_bytes(opt, p) == layout.state_bytes(spec), (variant, shape)
        want = {t.name: t for t in layout.state(spec)}
        got = {k: v for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        assert set(got) == set(want)
        for name, t in want.items():
            assert tuple(got[name].shape) == t.shape
            assert got[name].dtype == getattr(torch, t.dtype)
        # the only non-tensor bookkeeping is a Python int step
        assert [k for k, v in opt.state[p].items() if not isinstance(v, torch.Tensor)] == ["step"]
        assert type(opt.state[p]["step"]) is int


def test_packed_sign_is_one_bit_per_element():
    p = torch.nn.Parameter(torch.randn(1009, 1013))
    p.grad = torch.randn_like(p)
    opt = SMMF([p])
    opt.step()
    n = 1009 * 1013
    assert opt.state[p]["sign"].numel() == -(-n // 8)
    assert state_bytes(opt, p) == 8 * (1013 + 1009) + -(-n // 8)
    bool_opt = SMMF([p], sign="bool")
    bool_opt.step()
    assert state_bytes(bool_opt, p) == 8 * (1013 + 1009) + n


def test_state_is_not_reallocated():
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(64, 3, 3, 3), (16,), (16,), (300, 41)]]
    for sign in ("packed", "bool"):
        opt = SMMF(params, sign=sign, weight_decay=0.1)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        ptrs = {(id(p), k): v.data_ptr() for p in params for k, v in opt.state[p].items()
                if isinstance(v, torch.Tensor)}
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        assert ptrs == {(id(p), k): v.data_ptr() for p in params for k, v in opt.state[p].items()
                        if isinstance(v, torch.Tensor)}


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    ).to(dtype)


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=gen).to(next(model.parameters()).dtype)
        y = torch.randint(0, 10, (4,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()


@pytest.mark.parametrize("sign", ["packed", "bool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, {"beta": None}, {"vector_reshape": False}])
def test_state_dict_roundtrip_is_bit_exact(sign, dtype, kwargs):
    straight = _model(dtype)
    opt = SMMF(straight.parameters(), lr=1e-2, sign=sign, weight_decay=0.01, **kwargs)
    _train(straight, opt, 10, seed=1)
    _train(straight, opt, 10, seed=2)

    first = _model(dtype)
    opt1 = SMMF(first.parameters(), lr=1e-2, sign=sign, weight_decay=0.01, **kwargs)
    _train(first, opt1, 10, seed=1)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    resumed = _model(dtype)
    resumed.load_state_dict(ckpt["model"])
    opt2 = SMMF(resumed.parameters(), lr=1e-2, sign=sign, weight_decay=0.01, **kwargs)
    opt2.load_state_dict(ckpt["opt"])
    for p in resumed.parameters():
        st = opt2.state[p]
        spec = ParamSpec("p", tuple(p.shape), _dtype_name(dtype))
        want = {t.name: t for t in smmf_state(spec.shape, spec.dtype, first_moment="beta" not in kwargs,
                                               sign=sign, vector_reshape=kwargs.get("vector_reshape", True))}
        for name, t in want.items():
            assert st[name].dtype == getattr(torch, t.dtype), name
        assert state_bytes(opt2, p) == sum(t.nbytes for t in want.values())
        assert st["step"] == 10 and type(st["step"]) is int
    _train(resumed, opt2, 10, seed=2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        for k, v in opt.state[a].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, opt2.state[b][k]), k


def test_loaded_state_does_not_alias_checkpoint():
    model = _model(torch.float32)
    opt = SMMF(model.parameters())
    _train(model, opt, 2, seed=0)
    sd = opt.state_dict()
    opt2 = SMMF(model.parameters())
    opt2.load_state_dict(sd)
    saved_ptrs = {v.data_ptr() for st in sd["state"].values() for v in st.values()
                  if isinstance(v, torch.Tensor)}
    loaded_ptrs = {v.data_ptr() for st in opt2.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor)}
    assert saved_ptrs and not (saved_ptrs & loaded_ptrs)
