"""Every registry entry's state equals what its real implementation allocates, per parameter.

The test walks the registry: each family, each id of ``--optimizer all`` and the variants that
change the layout are built for real, stepped once with random gradients on a small CNN, a small
BERT (tied weights) and edge shapes in fp32 and bf16, and every parameter's state is compared with
the plan: the same tensor names, shapes and dtypes, and the same bytes
(:func:`smmf_plan.measure.state_bytes`), exactly. An entry is skipped only when its
implementation is not installed (with the reason), and a second test makes sure every entry's
implementation is installed by ``pip install -e .[test]``, so CI never skips one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from smmf_plan.measure import state_bytes, state_tensors, total_state_bytes
from smmf_plan.optimizers import ALL_IDS, FAMILIES, parse
from smmf_plan.plan import plan_state
from smmf_plan.sources.module import specs_from_module

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: variants whose layout differs from their family's default (beyond ``ALL_IDS``).
LAYOUT_VARIANTS = ("adam:amsgrad=true", "adam:fused=true", "adamw:amsgrad=true", "adamw:fused=true",
                   "smmf:beta=none",
                   "smmf:vector_reshape=false", "smmf:sign=bool,vector_reshape=false")
#: option values no CPU run can cover, with the reason (checked on a GPU by the device check).
CPU_CANNOT_RUN = {("adam", "capturable"): "capturable=True needs CUDA parameters",
                  ("adamw", "capturable"): "capturable=True needs CUDA parameters"}
IDS = tuple(dict.fromkeys((*FAMILIES, *ALL_IDS, *LAYOUT_VARIANTS)))


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


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("oid", IDS)
def test_planned_state_equals_the_real_implementation(model_name, oid):
    variant = parse(oid)
    missing = variant.missing_requirement()
    if missing:
        pytest.skip(missing)
    torch.manual_seed(0)
    model = MODELS[model_name]()
    specs = specs_from_module(model)
    params = list(model.parameters())  # distinct Parameter objects, registration order
    assert len(params) == len(specs)
    opt = variant.build(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for s, p in zip(specs, params):
        real = state_tensors(opt, p)  # tensor subclasses as their inner tensors
        planned = {t.name: t for t in variant.state(s)}
        assert set(planned) == set(real), (oid, s.name)
        for name, t in planned.items():
            assert (tuple(real[name].shape), _dtype(real[name])) == (t.shape, t.dtype), (oid, s.name, name)
        assert variant.state_bytes(s) == state_bytes(opt, p), (oid, s.name)
    assert plan_state(specs, variant).state_bytes == total_state_bytes(opt)


def test_the_variants_cover_every_layout_option():
    """Each bool, choice and ``none``-able option of every family is run with a non-default value
    somewhere in :data:`IDS` (or listed in :data:`CPU_CANNOT_RUN` with the reason)."""
    covered = {(parse(i).family, k) for i in IDS for k, v in parse(i).options.items()
               if v != FAMILIES[parse(i).family].options[k].default}
    for info in FAMILIES.values():
        for key, opt in info.options.items():
            if opt.kind in ("bool", "choice", "float|none"):
                assert (info.id, key) in covered or (info.id, key) in CPU_CANNOT_RUN, (info.id, key)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(specs: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in specs}


def test_every_implementation_is_installed_by_the_test_extra():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))
    project = pyproject["project"]
    installed = (_requirement_names(project["dependencies"])
                 | _requirement_names(project["optional-dependencies"]["test"])
                 | {_normalise(project["name"])})
    for info in FAMILIES.values():
        assert _normalise(info.requires.distribution) in installed, info.id
        extra = info.requires.extra
        if extra is not None:
            assert _normalise(info.requires.distribution) in _requirement_names(
                project["optional-dependencies"][extra]), (info.id, extra)


def test_frozen_parameters_get_no_state():
    from smmf_plan.shapes import ParamSpec

    specs = [ParamSpec("a", (10, 10)), ParamSpec("b", (10,), trainable=False)]
    # torch Adam: fp32 step + two 10×10 fp32 moments for the trainable parameter only
    assert plan_state(specs, parse("adam")).state_bytes == 4 + 2 * 4 * 100


def test_tied_weights_counted_once():
    model = small_bert()
    specs = specs_from_module(model)
    names = [s.name for s in specs]
    tied = [s for s in specs if s.aliases]
    assert tied and "cls.predictions.decoder.weight" in tied[0].aliases
    assert len(names) == len(set(names)) == len(list(model.parameters()))
