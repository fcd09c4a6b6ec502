"""The bundled H-Fac (from the paper's update equations) trains: a small MLP on scikit-learn's
digits reaches within 3 points of Adam's test accuracy after the same number of steps, in fp32
and with bf16 parameters; its state is exactly what the registry plans; its hyper-parameters are
validated; matrices keep their shape and other ranks are square-matricized as SMMF does."""

from __future__ import annotations

import pytest
import torch

from smmf_plan.optim import HFac
from smmf_plan.optimizers.hfac import hfac_matrix

STEPS = 300


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _accuracy(make_opt, dtype=torch.float32) -> float:
    (xtr, ytr), (xte, yte) = _digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.LayerNorm(128),
                                torch.nn.Linear(128, 10)).to(dtype)
    opt = make_opt(model.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        idx = torch.randint(0, len(ytr), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr[idx].to(dtype)).float(), ytr[idx]).backward()
        opt.step()
    with torch.no_grad():
        return (model(xte.to(dtype)).argmax(1) == yte).float().mean().item()


@pytest.fixture
def one_thread():
    """One intra-op thread: a tiny MLP gains nothing from more, and stays fast on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hfac_trains_as_well_as_adam(dtype, one_thread):
    adam = _accuracy(lambda p: torch.optim.Adam(p, lr=1e-3), dtype)
    hfac = _accuracy(lambda p: HFac(p, lr=1e-3), dtype)
    assert adam > 0.9, adam
    assert hfac >= adam - 0.03, (hfac, adam)


def test_state_is_the_registrys_and_matrices_keep_their_shape():
    from smmf_plan.measure import state_tensors
    from smmf_plan.optimizers import parse
    from smmf_plan.shapes import ParamSpec

    shapes = [(48, 20), (768,), (64, 3, 3, 3), (), (7,)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.bfloat16)) for s in shapes]
    opt = HFac(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert hfac_matrix((48, 20)) == (48, 20)         # the paper's matrix, not the most square one
    assert hfac_matrix((768,)) == (32, 24)           # SMMF's square-matricization
    assert hfac_matrix((64, 3, 3, 3)) == (48, 36)
    assert hfac_matrix(()) == (1, 1)
    for s, p in zip(shapes, params):
        real = {k: (tuple(v.shape), v.dtype) for k, v in state_tensors(opt, p).items()}
        m, n = hfac_matrix(s)
        assert real == {"u": ((m,), torch.float32), "v": ((n,), torch.float32),
                        "r": ((m,), torch.float32), "s": ((n,), torch.float32)}
        assert parse("hfac").state_bytes(ParamSpec("p", s, "bfloat16")) == 4 * 2 * (m + n)


def test_first_step_is_the_clipped_normalized_gradient():
    """At t = 1 both time-corrected decays are 0: φ = ψ = 0, V̂ = r sᵀ / Σr of this gradient, and
    the update is clip(G / √V̂) (RMS at most d)."""
    g = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    p = torch.nn.Parameter(torch.zeros(2, 2))
    p.grad = g.clone()
    HFac([p], lr=1.0, eps=1e-30, clip_threshold=1.0).step()
    r, s = (g * g).sum(1), (g * g).sum(0)
    u = g / torch.sqrt(torch.outer(r, s) / r.sum())
    u = u / max(1.0, float(u.pow(2).mean().sqrt()))
    torch.testing.assert_close(p.detach(), -u)


@pytest.mark.parametrize("kwargs, needle", [
    ({"lr": -1.0}, "learning rate"), ({"betas": (0.9, 1.0)}, "betas"), ({"eps": 0.0}, "eps"),
    ({"clip_threshold": 0.0}, "clip_threshold"), ({"weight_decay": -0.1}, "weight_decay"),
])
def test_bad_hyper_parameters_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        HFac([torch.nn.Parameter(torch.zeros(2))], **kwargs)
