"""End-to-end step memory: the breakdown's arithmetic, and its accuracy against real CPU steps."""

import statistics
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from smmf_plan.errors import PlanError
from smmf_plan.memory import estimate, spec_of_module
from smmf_plan.optimizers import parse_many
from smmf_plan.peak import measure_in_subprocess
from smmf_plan.recipe import Recipe

GPT2 = {"config_class": "GPT2Config", "model_class": "GPT2LMHeadModel",
        "config": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256}}
CASES = {  # name → (recipe model, input_size, seq_len, batches)
    "resnet18": ({"timm": "resnet18"}, [3, 96, 96], None, (2, 8)),
    "vit_tiny": ({"timm": "vit_tiny_patch16_224", "kwargs": {"img_size": 96}}, None, None, (2, 8)),
    "gpt2_tiny": ({"transformers": GPT2}, None, 64, (2, 8)),
}


def _meta_factory(model):
    def make():
        with torch.device("meta"):
            if "timm" in model:
                import timm

                return timm.create_model(model["timm"], pretrained=False, **model.get("kwargs", {}))
            import transformers

            t = model["transformers"]
            cfg = getattr(transformers, t["config_class"])(**t["config"])
            return getattr(transformers, t["model_class"])(cfg)
    return make


def test_total_is_exact_sum_and_parts_are_exact():
    make = _meta_factory({"timm": "resnet18"})
    spec = spec_of_module(make(), "resnet18")
    est = estimate(spec, parse_many("adam,smmf"), batch_size=2, input_size=(3, 64, 64),
                   module_factory=make)
    module = make()
    params = sum(-(-p.numel() * 4 // 64) * 64 for p in module.parameters())  # 64-B aligned
    buffers = sum(-(-b.numel() * b.element_size() // 64) * 64 for b in module.buffers())
    numel = sum(p.numel() for p in module.parameters())
    doc = est.to_dict()["optimizers"]
    for oid, b in est.breakdowns.items():
        assert b["weights"] == params + buffers and b["grads"] == params
        assert b.total_bytes == est.total_at(oid)(2) == sum(b.values())
        assert est.breakdown_at(oid, 2) == b
        # every part with bytes, the default glibc model's allocator part among them; the
        # distributed-only parts (master, comm) and the host parts (offload) have none here
        assert b["allocator"] > 0
        assert doc[oid]["breakdown"] == b.to_dict() == {
            k: v for k, v in b.items() if k in ("weights", "grads", "state_allocated", "activations",
                                                "temporaries", "runtime", "allocator")}
        assert doc[oid]["total_bytes"] == sum(b.values())
    # Adam: two fp32 moments per parameter + one fp32 `step` per tensor, logically
    n_tensors = len(list(module.parameters()))
    assert est.state_bytes["adam"] == doc["adam"]["state_bytes"] == 8 * numel + 4 * n_tensors
    assert est.breakdowns["adam"]["state_allocated"] > 2 * params > est.breakdowns["smmf"]["state_allocated"]
    assert est.total_at("adam")(16) > est.total_at("adam")(2)
    assert any("extrapolated linearly" in a for a in est.assumptions)


def test_frozen_parameters_get_no_gradient_and_cuda_rounds_to_512():
    make = _meta_factory({"timm": "resnet18"})
    spec = spec_of_module(make(), "resnet18")
    from smmf_plan.shapes import ParamSpec

    spec.params = [ParamSpec(p.name, p.shape, p.dtype, p.name.startswith("fc."), p.aliases)
                   for p in spec.params]
    est = estimate(spec, parse_many("adam"), input_size=(3, 64, 64), module_factory=make,
                   allocator="cuda")
    b = est.breakdowns["adam"]
    assert b["grads"] == (512 * 1000 * 4) + 512 * 8  # fc.weight, fc.bias (4000 B → 4096 B)
    # two GEMM threads (forward, autograd's device thread), each with a 32 MiB cuBLAS and a
    # 1 MiB cuBLASLt workspace
    assert est.runtime_parts == {"cublas_workspace": 2 * (32 + 1) << 20}


def test_bad_options_are_plan_errors():
    make = _meta_factory({"timm": "resnet18"})
    spec = spec_of_module(make(), "resnet18")
    with pytest.raises(PlanError):
        estimate(spec, parse_many("adam"), batch_size=0, module_factory=make)
    with pytest.raises(PlanError, match="--amp"):
        estimate(spec, parse_many("adam"), amp="int4", module_factory=make)
    with pytest.raises(PlanError, match="allocator"):
        estimate(spec, parse_many("adam"), allocator="tpu", module_factory=make)


def _measure(job):
    case, allocator, batches, checkpointing = job
    model, size, seq, _ = CASES[case]
    recipe = {"model": model, "batch_sizes": list(batches), "optimizer": "adam",
              "grad_checkpointing": checkpointing}
    if size:
        recipe["input_size"] = size
    if seq:
        recipe["seq_len"] = seq
    # glibc-mmap: MALLOC_MMAP_THRESHOLD_=131072 in the child; glibc: nothing set
    env = {} if allocator == "glibc" else None
    return measure_in_subprocess(recipe, env=env)


#: fresh processes per model under glibc's defaults: its peak RSS varies from run to run (which
#: freed heap blocks get refilled depends on where small objects land: 4-8% on these models), so
#: the median is compared.
DEFAULT_RUNS = 3
#: the steps measured under glibc's defaults, (case, batch, gradient checkpointing), one per model
#: (each fresh process costs an import of torch and the model's library; the report measures both
#: batches of each, and more models and recipes). resnet18 at batch 8; vit_tiny at batch 8 with
#: checkpointing (recomputation refilling its holes, the rule in smmf_plan/allocators/glibc.py);
#: the tiny GPT-2 at batch 8. How many of its 24.5 MiB vocabulary-sized blocks stay resident as
#: holes differs from process to process, in whole blocks: at batch 4 nine processes measured
#: 333-431 MiB in steps of ~24.5 MiB, so a median of 3 leaves its band now and then (one run in
#: about 15); at batch 8 the same blocks are a smaller share (551-598 MiB, estimate 1.12x the
#: median); at batch 2 the spread is 33% (reports/memory-accuracy.md).
GLIBC_STEPS = (("resnet18", 8, False), ("vit_tiny", 8, True), ("gpt2_tiny", 8, False))


@pytest.fixture(scope="module")
def measured():
    """Fresh processes. Under glibc's defaults ``DEFAULT_RUNS`` per step of ``GLIBC_STEPS``, one
    batch each (a batch stepped after another inherits that one's heap: the model's claim is about
    a fresh process, as in reports/memory-accuracy.md); with MALLOC_MMAP_THRESHOLD_=131072 one
    process per model stepping both batches (RSS is deterministic there and follows the live
    tensors)."""
    jobs = [(case, "glibc", (b,), ckpt) for case, b, ckpt in GLIBC_STEPS for _ in range(DEFAULT_RUNS)]
    jobs += [(case, "glibc-mmap", CASES[case][3], False) for case in CASES]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda job: (job, _measure(job)), jobs))
    out = {}
    for (case, allocator, batches, ckpt), got in runs:
        if allocator == "glibc":
            out.setdefault((case, batches[0], ckpt), []).append(got[0])
        else:
            out[(case, allocator)] = got
    return out


def _predicted(case, batch, allocator, checkpointing=False):
    """The estimate without its import terms (the measurement's baseline is taken after them)."""
    model, size, seq, _ = CASES[case]
    make = _meta_factory(model)
    est = estimate(spec_of_module(make(), case), parse_many("adam"), batch_size=batch,
                   input_size=size, seq_len=seq, module_factory=make, allocator=allocator,
                   recipe=Recipe(grad_checkpointing=checkpointing))
    rp = est.runtime_parts
    return est.breakdowns["adam"].total_bytes - rp["pytorch"] - rp.get("library", 0)


@pytest.mark.parametrize("case, batch, checkpointing", GLIBC_STEPS)
def test_default_glibc_estimate_holds_and_is_at_most_a_quarter_over(case, batch, checkpointing,
                                                                     measured):
    """A real CPU step under glibc's defaults (what a user who sets nothing runs), peak RSS growth
    over the post-import baseline, median of fresh processes: the ``glibc`` estimate (the default
    on CPU devices) is never below it and at most 25% above it."""
    runs = measured[(case, batch, checkpointing)]
    assert all(r.hwm_reset and r.env == {"MALLOC_MMAP_THRESHOLD_": ""} for r in runs)
    median = statistics.median(r.rss_growth for r in runs)
    predicted = _predicted(case, batch, "glibc", checkpointing)
    assert median <= predicted <= 1.25 * median, (case, batch, predicted, median)


@pytest.mark.parametrize("case", list(CASES))
def test_glibc_mmap_estimate_within_15_percent_of_measured_rss(case, measured):
    """The same step with MALLOC_MMAP_THRESHOLD_=131072 (deterministic RSS): the ``glibc-mmap``
    estimate is within ±15% at both batch sizes."""
    for b, m in zip(CASES[case][3], measured[(case, "glibc-mmap")]):
        assert m.hwm_reset and m.env == {"MALLOC_MMAP_THRESHOLD_": "131072"}
        predicted = _predicted(case, b, "glibc-mmap")
        assert abs(predicted - m.rss_growth) <= 0.15 * m.rss_growth, (case, b, predicted, m.rss_growth)
