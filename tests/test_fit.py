"""Fit verdicts: headroom, largest batch (search vs closed form / brute force), the one-liner."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smmf_plan import dtypes
from smmf_plan.allocators import round_up
from smmf_plan.devices import get_device
from smmf_plan.errors import PlanError
from smmf_plan.fit import (
    MAX_BATCH,
    Fit,
    affine,
    check_batch_size,
    fit,
    max_batch,
    recommendation,
    smallest_device,
)
from smmf_plan.optimizers import parse_many
from smmf_plan.plan import plan_state

MiB = 2**20


@given(fixed=st.integers(0, 10**12), per=st.integers(1, 10**10), usable=st.integers(0, 10**13))
@settings(max_examples=300, deadline=None)
def test_search_equals_closed_form_for_affine_totals(fixed, per, usable):
    expected = 0 if usable < fixed + per else min(MAX_BATCH, (usable - fixed) // per)
    got, capped = max_batch(affine(fixed, per), usable)
    assert got == expected
    assert capped == (expected == MAX_BATCH and fixed + MAX_BATCH * per <= usable)


@given(fixed=st.integers(0, 10**7), per=st.integers(1, 10**5), quantum=st.sampled_from([64, 512, 2**21]),
       usable=st.integers(0, 10**8))
@settings(max_examples=150, deadline=None)
def test_search_equals_brute_force_for_rounded_totals(fixed, per, quantum, usable):
    def total_at(b):
        return round_up(fixed, quantum) + round_up(b * per, quantum)

    brute = 0
    for b in range(1, 3001):
        if total_at(b) > usable:
            break
        brute = b
    got, _ = max_batch(total_at, usable, cap=3000)
    assert got == min(brute, 3000)


def test_search_is_logarithmic():
    calls = []

    def total_at(b):
        calls.append(b)
        return 1000 + 7 * b

    got, capped = max_batch(total_at, 1000 + 7 * 123_456)
    assert (got, capped) == (123_456, False)
    assert len(calls) <= 2 * math.ceil(math.log2(123_456)) + 2


def test_constant_total_is_capped():
    f = fit(affine(100, 0), 1000, 4)
    assert f == Fit(True, 900, MAX_BATCH, 100, 1000, 4, capped=True)
    assert f.to_dict() == {"fits": True, "headroom_bytes": 900, "max_batch_size": MAX_BATCH,
                           "max_batch_size_capped": True}
    assert f.max_batch_text() == f"≥{MAX_BATCH:,}"


def test_not_even_batch_one():
    f = fit(affine(900, 200), 1000, 1)
    assert (f.fits, f.headroom_bytes, f.max_batch_size) == (False, -100, 0)


def test_fits_smaller_batch_only():
    f = fit(affine(100, 100), 1000, 16)
    assert (f.fits, f.headroom_bytes, f.max_batch_size, f.total_bytes) == (False, -700, 9, 1700)


def test_boundary_is_inclusive():
    f = fit(affine(100, 100), 1000, 9)
    assert (f.fits, f.headroom_bytes, f.max_batch_size) == (True, 0, 9)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_batch_sizes_are_named(bad):
    with pytest.raises(PlanError) as e:
        check_batch_size(bad)
    assert repr(bad) in str(e.value) or str(bad) in str(e.value)
    with pytest.raises(PlanError):
        fit(affine(1, 1), 10, bad)


def test_batch_size_is_bounded_by_max_batch(capsys):
    """-b 10**12 used to plan 20,356,769 TiB; the bound is the documented MAX_BATCH (2**20)."""
    from smmf_plan.cli import main

    assert MAX_BATCH == 1_048_576 and check_batch_size(1_048_576) == 1_048_576
    with pytest.raises(PlanError, match="at most 1,048,576"):
        check_batch_size(1_048_577)
    for command in (["resnet18"], ["size", "resnet18", "-d", "4GB"]):
        with pytest.raises(SystemExit) as e:
            main([*command, "-o", "adam", "-b", str(10**12)])
        out, err = capsys.readouterr()
        assert e.value.code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith("error: --batch-size 1,000,000,000,000 is larger than") and "TiB" not in err


def test_bad_usable_is_named():
    with pytest.raises(PlanError, match="-1"):
        fit(affine(1, 1), -1, 1)


# ---------------------------------------------------------------- real numbers from plan_state

@pytest.fixture(scope="module")
def resnet18():
    import timm  # dependencies of smmf-plan: a missing one is a failure, not a skip
    import torch

    from smmf_plan.sources.module import specs_from_module

    with torch.device("meta"):
        model = timm.create_model("resnet18")
    return specs_from_module(model)


def step_without_activations(specs, layout, allocator):
    """weights + grads + allocator-rounded state: what a step needs before activations."""
    quantum = 64 if allocator == "cpu" else 512
    weights = sum(round_up(s.numel * dtypes.itemsize(s.dtype), quantum) for s in specs)
    grads = sum(round_up(s.numel * dtypes.itemsize(s.dtype), quantum) for s in specs if s.trainable)
    return weights + grads + plan_state(specs, layout).allocated_bytes[allocator]


def test_resnet18_on_an_ad_hoc_budget(resnet18):
    """resnet18: 11.69 M fp32 params. Adam's state is 2 × weights, SMMF's a small fraction, so a
    budget between their totals separates them, and the verdict numbers are exact integers."""
    layouts = {v.id: v for v in parse_many("adam,smmf")}
    fixed = {oid: step_without_activations(resnet18, v, "cpu") for oid, v in layouts.items()}
    per_sample = 3 * 2**20  # an activation slope; the fit logic only needs it to be affine
    device = get_device("120MiB")
    fits = {oid: fit(affine(f, per_sample), device.usable_bytes, 1) for oid, f in fixed.items()}
    assert fixed["adam"] > device.usable_bytes > fixed["smmf"] + per_sample
    assert not fits["adam"].fits and fits["smmf"].fits
    assert fits["smmf"].headroom_bytes == 120 * MiB - fixed["smmf"] - per_sample
    assert fits["smmf"].max_batch_size == (120 * MiB - fixed["smmf"]) // per_sample
    assert fits["adam"].max_batch_size == 0
    line = recommendation(device, fits)
    assert line.startswith("Only smmf fits 120MiB (120 MiB usable): ")
    assert f"; adam needs {round(fits['adam'].total_bytes / MiB)} MiB" in line


def test_resnet18_smallest_device(resnet18):
    from smmf_plan.devices import list_devices

    layout = parse_many("adam")[0]
    pairs = []
    for d in list_devices(use_pyproject=False):
        total = step_without_activations(resnet18, layout, d.allocator)
        pairs.append((d, fit(affine(total, 0), d.usable_bytes, 1)))
    # ~180 MiB: too big for the MCUs; the Zero 2 W (355 MiB usable) is the smallest that fits
    assert smallest_device(pairs).id == "rpi-zero-2w"
    # the Pi Zero (ARMv6) fits in memory but does not run PyTorch
    some = [(d, f) for d, f in pairs if d.id in ("rpi-zero", "rpi-4-1gb")]
    assert smallest_device(some, require_pytorch=False).id == "rpi-zero"
    assert smallest_device(some).id == "rpi-4-1gb"
    assert smallest_device([(d, f) for d, f in pairs if d.id == "esp32-s3"]) is None


# ---------------------------------------------------------------- the one-line verdict

def F(total, usable, batch=1, per=10 * MiB):
    return fit(affine(total - batch * per, per), usable, batch)


def test_the_issue_example_on_rpi_zero():
    d = get_device("rpi-zero")
    line = recommendation(d, {"adam": F(698 * MiB, d.usable_bytes), "smmf": F(318 * MiB, d.usable_bytes)})
    assert line == ("Only smmf fits rpi-zero (383 MiB usable): 318 MiB at batch 1; adam needs 698 MiB"
                    " — fits in memory, but PyTorch does not run on rpi-zero (ARMv6: no PyTorch wheels)")


def test_nothing_fits_and_no_pytorch_anyway():
    d = get_device("esp32-s3")
    line = recommendation(d, {"adam": F(698 * MiB, d.usable_bytes), "smmf": F(318 * MiB, d.usable_bytes)})
    assert line.startswith("No optimizer fits esp32-s3 (8 MiB usable) at batch 1: smmf needs least, "
                           "318 MiB (310 MiB over); adam 698 MiB")
    assert line.endswith("— and PyTorch does not run on esp32-s3 anyway (microcontroller: no PyTorch)")


def test_all_fit_names_least_and_most():
    d = get_device("4GiB")
    fits = {o: F(t * MiB, d.usable_bytes, batch=8) for o, t in
            (("adam", 900), ("smmf", 500), ("came", 1000))}
    assert recommendation(d, fits) == (
        "All 3 optimizers fit 4GiB (4.00 GiB usable) at batch 8: smmf needs least, 500 MiB "
        f"(largest batch {fits['smmf'].max_batch_size}); came needs most, 1000 MiB "
        f"(largest batch {fits['came'].max_batch_size})")


def test_several_fit_some_only_at_smaller_batch():
    d = get_device("1GiB")
    fits = {o: F(t * MiB, d.usable_bytes, batch=4) for o, t in
            (("adam", 1040), ("sm3", 700), ("smmf", 600))}
    line = recommendation(d, fits)
    assert line == ("Only smmf, sm3 fit 1GiB (1.00 GiB usable): smmf 600 MiB, sm3 700 MiB at batch 4; "
                    "adam needs 1.02 GiB (fits up to batch 2)")


def test_single_optimizer_and_marginal_pytorch():
    d = get_device("rpi-3b")
    ok = recommendation(d, {"smmf": F(400 * MiB, d.usable_bytes)})
    assert ok.startswith("smmf fits rpi-3b (729 MiB usable): 400 MiB at batch 1, 329 MiB to spare")
    assert "PyTorch training on rpi-3b is marginal" in ok
    bad = recommendation(d, {"adam": F(800 * MiB, d.usable_bytes)})
    assert bad.startswith("adam does not fit rpi-3b (729 MiB usable): needs 800 MiB at batch 1, 71 MiB over")


# ---------------------------------------------------------------- step memory and plan JSON

def toy_spec():
    from smmf_plan.model import ModelSpec
    from smmf_plan.shapes import ParamSpec

    return ModelSpec("toy", "test", [ParamSpec("w", (300, 200), "float32", True),
                                     ParamSpec("b", (3,), "float32", True),
                                     ParamSpec("frozen", (50, 50), "float16", False)])


def toy_estimate(allocator: str, optimizers: str = "adam,smmf"):
    """The estimate of a bare spec (no architecture: nothing to trace, activations not known)."""
    from smmf_plan import memory

    return memory.estimate(toy_spec(), parse_many(optimizers), batch_size=2, allocator=allocator)


def test_weights_grads_and_state_are_rounded_per_tensor():
    spec = toy_spec()
    adam = toy_estimate("cuda").steps()["adam"]
    bd = adam.breakdown
    assert bd["weights"] == 240_128 + 512 + 5120  # each tensor in 512-B blocks
    assert bd["grads"] == 240_128 + 512           # the frozen tensor has no gradient
    # Adam on CUDA: exp_avg + exp_avg_sq per trainable tensor in 512-B blocks (its 4-B `step`
    # lives on the host, not in device memory); logically numel × 4 B each, plus the steps
    assert bd["state_allocated"] == 2 * (240_128 + 512)
    assert adam.state_bytes == 2 * (240_000 + 12) + 2 * 4
    assert bd["state_allocated"] == plan_state(spec.params, parse_many("adam")[0]).allocated_bytes["cuda"]
    assert adam.total_bytes == sum(bd.values()) and not adam.complete
    assert adam.total_at(1) == adam.total_at(1000) == adam.total_bytes  # no activation model
    cpu = toy_estimate("glibc", "adam").breakdowns["adam"]
    assert cpu["weights"] == 240_000 + 64 + 5056  # 64-B aligned


def test_step_json_with_and_without_device():
    from smmf_plan.report.fit_table import judge
    from smmf_plan.report.step_json import optimizer_json

    steps = toy_estimate("glibc").steps()
    for oid, s in steps.items():
        o = optimizer_json(s, None)
        assert (o["fits"], o["headroom_bytes"], o["max_batch_size"]) == (None, None, None)
        # no architecture: activations unknown (null), the total the sum of the known parts
        assert o["breakdown"]["activations"] is None and o["complete"] is False
        assert o["total_bytes"] == sum(v for v in o["breakdown"].values() if v) == s.total_bytes
        assert o["state_bytes"] == plan_state(toy_spec().params, parse_many(oid)[0]).state_bytes
    small = min(s.total_bytes for s in steps.values())
    device = get_device(f"{small}B")
    fits = judge(steps, device, 1)
    smmf, adam = (optimizer_json(steps[o], fits[o]) for o in ("smmf", "adam"))
    assert small == steps["smmf"].total_bytes < steps["adam"].total_bytes
    # smmf's lower bound fits exactly: whether it fits is not known; adam's is over: it does not
    assert (smmf["fits"], smmf["headroom_bytes"], smmf["max_batch_size"]) == (None, None, None)
    assert (adam["fits"], adam["headroom_bytes"], adam["max_batch_size"]) == (False, None, None)


def test_steps_follow_the_memory_model():
    est = toy_estimate("glibc")
    steps = est.steps()
    assert set(steps) == {"adam", "smmf"}
    for oid, s in steps.items():
        assert s.complete is est.complete is False  # a bare spec: no architecture to trace
        assert s.total_at(2) == s.total_bytes == est.breakdowns[oid].total_bytes
        assert s.total_at(4) == est.breakdown_at(oid, 4).total_bytes >= s.total_at(2)
