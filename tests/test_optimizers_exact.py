"""Every registry entry's state equals what its real implementation allocates, per parameter.

The test walks the registry: each family, each id of ``--optimizer all`` and the variants that
change the layout are built for real from the planned specs (so parameter groups and names are
the planned ones), stepped once with random gradients on a small CNN, a small BERT (tied
weights), a small LLaMA (grouped-query attention) and edge shapes in fp32 and bf16, and every
parameter's state is compared with the plan: the same tensor names, shapes and dtypes, and the
same bytes (:func:`smmf_plan.measure.state_bytes`: storages, tensor subclasses by their inner
tensors, shared tensors once in the total), exactly. Where the plan says the implementation
cannot train a model (Adam-mini on BERT), the real step must fail. torchao's optimizers compile
their step with ``torch.compile``; the layout is created outside the compiled function, so the
test runs that function eagerly (compiling each shape on two CPU cores would take minutes).

Every entry's implementation is installed by ``pip install -e .[test]`` (a second test checks the
extras), so a missing one fails here, except the entries no package registry has (COAP,
Adalayer): they are left out of the walk, and ``tests/test_optimizers_from_source.py`` checks
their layouts against their sources' formulas.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from smmf_plan.measure import state_bytes, state_tensors, total_state_bytes
from smmf_plan.model import model_facts
from smmf_plan.optimizers import ALL_IDS, FAMILIES, Unsupported, parse
from smmf_plan.plan import plan_state
from smmf_plan.sources.module import specs_from_module

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: variants whose layout differs from their family's default (beyond ``ALL_IDS``).
LAYOUT_VARIANTS = ("adam:amsgrad=true", "adam:fused=true", "adamw:amsgrad=true", "adamw:fused=true",
                   "smmf:beta=none",
                   "smmf:vector_reshape=false", "smmf:sign=bool,vector_reshape=false",
                   "sgd:momentum=0.9,nesterov=true,fused=true", "signum:momentum=0",
                   "adamw8bit:paged=true", "adam-mini:dim=64,n_heads=2,n_kv_heads=1",
                   "galore:rank=4", "apollo:rank=4,scale_type=tensor",
                   "apollo-mini:scale_type=channel", "muon:fused=true",
                   "soap:precondition_1d=true,max_precondition_dim=40",
                   "schedulefree-adamw:impl=schedulefree")
#: option values no CPU run can cover, with the reason (checked on a GPU by the device check).
CPU_CANNOT_RUN = {("adam", "capturable"): "capturable=True needs CUDA parameters",
                  ("adamw", "capturable"): "capturable=True needs CUDA parameters"}
#: families no package registry has: planned from their source, checked against its formulas
#: in tests/test_optimizers_from_source.py.
FROM_SOURCE = {"coap", "adalayer"}
IDS = tuple(i for i in dict.fromkeys((*FAMILIES, *ALL_IDS, *LAYOUT_VARIANTS))
            if parse(i).family not in FROM_SOURCE)


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


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)  # grouped-query attention: K and V have 2 heads of 16


MODELS = {
    "cnn": small_cnn,
    "bert": small_bert,
    "llama_gqa": small_llama,
    "edge_fp32": lambda: EdgeShapes(torch.float32),
    "edge_bf16": lambda: EdgeShapes(torch.bfloat16),
}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


@pytest.fixture
def eager_torch_compile(monkeypatch):
    """torchao's step runs ``torch.compile(single_param_adam)``: run the function eagerly."""
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: fn)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("oid", IDS)
def test_planned_state_equals_the_real_implementation(model_name, oid, eager_torch_compile):
    variant = parse(oid)
    torch.manual_seed(0)
    model = MODELS[model_name]()
    config = getattr(model, "config", None)
    variant = variant.bind(model_facts({"config": config.to_dict() if config else None}))
    specs = specs_from_module(model)
    params = list(model.parameters())  # distinct Parameter objects, registration order
    assert len(params) == len(specs)
    try:
        plan = plan_state(specs, variant)
    except Unsupported:
        opt = variant.build(list(zip(specs, params)))
        for p in params:
            p.grad = torch.randn_like(p)
        with pytest.raises(Exception):  # the real implementation fails on this model too
            opt.step()
        return
    opt = variant.build(list(zip(specs, params)))
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
    assert plan.state_bytes == total_state_bytes(opt)


def test_the_variants_cover_every_layout_option():
    """Each bool, choice and ``none``-able option of every family is run with a non-default value
    somewhere in :data:`IDS` (or listed in :data:`CPU_CANNOT_RUN` with the reason)."""
    covered = {(parse(i).family, k) for i in IDS for k, v in parse(i).options.items()
               if v != FAMILIES[parse(i).family].options[k].default}
    for info in FAMILIES.values():
        if info.id in FROM_SOURCE:
            continue
        for key, opt in info.options.items():
            if opt.kind in ("bool", "choice", "float|none", "int|none"):
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
        for impl in (info.default_impl, *info.impls.values()):
            req = impl.requires
            if req.source is not None:  # not on a package registry: planned from its source
                assert info.id in FROM_SOURCE, info.id
                continue
            assert _normalise(req.distribution) in installed, info.id
            if req.extra is not None:
                assert _normalise(req.distribution) in _requirement_names(
                    project["optional-dependencies"][req.extra]), (info.id, req.extra)


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
