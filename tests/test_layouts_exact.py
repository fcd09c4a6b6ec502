"""Predicted optimizer-state bytes equal what the real implementations allocate, per parameter.

Each case builds a real model, runs one real ``optimizer.step()`` with random gradients and
compares ``smmf_plan.measure.state_bytes(optimizer, p)`` to the layout's prediction, exactly.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from smmf_plan.layouts import ALL_IDS, parse_layout
from smmf_plan.measure import state_bytes
from smmf_plan.sources.module import specs_from_module

HAS_COMPARE = all(importlib.util.find_spec(m) for m in ("came_pytorch", "pytorch_optimizer"))
LAYOUT_IDS = ALL_IDS + ("adam:amsgrad=true", "smmf:beta=none", "smmf:vector_reshape=false",
                        "smmf:sign=bool,vector_reshape=false")


def _needs(layout_id: str):
    req = parse_layout(layout_id).requires
    if req in ("came-pytorch", "pytorch-optimizer") and not HAS_COMPARE:
        pytest.skip(f"{req} (the 'compare' extra) is not installed")


class EdgeShapes(nn.Module):
    """Shapes that break naive rules: 0-d, 1-element, prime numel, (1,768), (C,1,1,1), a
    perfect square, rank 5."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        shapes = [(), (1,), (7,), (1009,), (1, 768), (32, 1, 1, 1), (13, 17), (1024,), (4, 5, 6),
                  (2, 3, 4, 5, 6), (97, 3, 3, 3)]
        self.ps = nn.ParameterList(nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes)


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),  # depthwise
        nn.Conv2d(16, 32, 1),  # pointwise 1×1
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def small_bert():
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64)
    return BertForMaskedLM(cfg)  # ties the decoder to the word embeddings


MODELS = {
    "cnn": small_cnn,
    "bert": small_bert,
    "edge_fp32": lambda: EdgeShapes(torch.float32),
    "edge_bf16": lambda: EdgeShapes(torch.bfloat16),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("layout_id", LAYOUT_IDS)
def test_predicted_state_equals_allocated(model_name, layout_id):
    _needs(layout_id)
    torch.manual_seed(0)
    model = MODELS[model_name]()
    layout = parse_layout(layout_id)
    specs = specs_from_module(model)
    params = [p for p in model.parameters()]  # distinct Parameter objects, registration order
    assert len(params) == len(specs)
    opt = layout.build(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    mismatches = {
        s.name: (layout.state_bytes(s), state_bytes(opt, p))
        for s, p in zip(specs, params)
        if layout.state_bytes(s) != state_bytes(opt, p)
    }
    assert not mismatches, f"{layout_id} on {model_name}: predicted != measured {mismatches}"
    # the tensors themselves: names, shapes and dtypes, not only the byte sum
    for s, p in zip(specs, params):
        real = {k: v for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        planned = {t.name: t for t in layout.state(s)}
        for name, t in planned.items():
            if name in real:
                assert tuple(real[name].shape) == t.shape, (layout_id, s.name, name)
                assert str(real[name].dtype).removeprefix("torch.") == t.dtype, (layout_id, s.name, name)


def test_frozen_parameters_get_no_state():
    from smmf_plan.plan import plan_state
    from smmf_plan.shapes import ParamSpec

    specs = [ParamSpec("a", (10, 10)), ParamSpec("b", (10,), trainable=False)]
    layout = parse_layout("adam")
    assert plan_state(specs, layout).state_bytes == layout.state_bytes(specs[0]) == 804


def test_tied_weights_counted_once():
    model = small_bert()
    specs = specs_from_module(model)
    names = [s.name for s in specs]
    tied = [s for s in specs if s.aliases]
    assert tied and "cls.predictions.decoder.weight" in tied[0].aliases
    assert len(names) == len(set(names)) == len(list(model.parameters()))
