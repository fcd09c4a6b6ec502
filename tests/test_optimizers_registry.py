"""The optimizer registry's grammar, errors and records: ids as users write them, one-line errors
with the closest ids, valid ranges, paper names, parameter groups and shared state tensors, and a
registry that imports no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from smmf_plan.cli import main
from smmf_plan.optimizers import (
    ALL_IDS,
    DEFAULT_IDS,
    FAMILIES,
    OptimizerInfo,
    OptimizerVariant,
    ParamGroup,
    StateTensor,
    UnknownOptimizer,
    by_paper_name,
    parse,
    parse_many,
)
from smmf_plan.optimizers.base import KINDS, Interval, Option, Requirement
from smmf_plan.plan import plan_state
from smmf_plan.shapes import ParamSpec


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_ids_keep_their_spelling_and_parse_their_options():
    v = parse("SMMF:sign=bool,beta=none")
    assert v.id == "SMMF:sign=bool,beta=none" and v.family == "smmf"
    assert dict(v.options) == {"sign": "bool", "beta": None, "vector_reshape": True}
    assert parse("sm3:momentum=0").options["momentum"] == 0.0
    assert parse("adam:amsgrad=yes,weight-decay=0.1").options == {
        "amsgrad": True, "fused": False, "capturable": False, "weight_decay": 0.1}


def test_lists_expand_all_and_continue_options_after_commas():
    assert [v.id for v in parse_many(None)] == list(DEFAULT_IDS)
    assert [v.id for v in parse_many("  ")] == list(DEFAULT_IDS)
    assert [v.id for v in parse_many("all")] == list(ALL_IDS)
    assert [v.id for v in parse_many("adam,smmf:sign=bool,beta=none,sm3")] == [
        "adam", "smmf:sign=bool,beta=none", "sm3"]
    assert [v.id for v in parse_many("adam,all,adam")] == list(ALL_IDS)  # duplicates once


@pytest.mark.parametrize("text, needle", [
    ("adamm", "did you mean adam"),
    ("smf", "did you mean smmf"),
    ("adam:amsgrd=true", "did you mean amsgrad?"),
    ("adam:betas=1", "key in: amsgrad=…, fused=…, capturable=…, weight_decay=…"),
    ("came:beta1=0.9", "key in: none"),
    ("sm3:momentum=-0.5", "out of range: valid [0, 1)"),
    ("sm3:momentum=1", "out of range: valid [0, 1)"),
    ("smmf:beta=1.5", "valid [0, 1] or none"),
    ("adam:weight_decay=-1e-2", "valid [0, inf)"),
    ("adafactor:beta1=nan", "valid [0, 1] or none"),
    ("adam:amsgrad=maybe", "expected true or false"),
    ("smmf:sign=nibble", "must be one of packed, bool"),
    ("smmf:beta", "expected key=value"),
])
def test_bad_ids_are_one_line_errors_naming_the_fix(text, needle):
    with pytest.raises(UnknownOptimizer) as e:
        parse_many(text)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


@pytest.mark.parametrize("value, needle", [
    ("adamw2", "did you mean adamw"),
    ("adam:amsgrd=true", "did you mean amsgrad"),
    ("sm3:momentum=-0.9", "valid [0, 1)"),
])
def test_cli_exits_2_with_one_line(value, needle, capsys):
    code, out, err = run(["resnet18", "-o", value, "--json"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and needle in lines[0], err


def test_every_entry_is_complete():
    for info in FAMILIES.values():
        assert info.id == info.id.lower() and ":" not in info.id
        assert info.display_name and info.summary and info.reproduces and info.verified
        module, _, attr = info.implementation.partition(":")
        assert module and attr, info.implementation
        assert info.probe_lr > 0
        for key, opt in info.options.items():
            assert opt.help and opt.kind in KINDS, (info.id, key)
            assert (opt.kind == "choice") == bool(opt.choices), (info.id, key)
            if opt.default is not None and opt.kind in ("float", "float|none", "int"):
                assert opt.range is None or opt.default in opt.range, (info.id, key)
            assert opt.parse(_word(opt.default)) == opt.default, (info.id, key)
        for impl_key, impl in {None: info.default_impl, **info.impls}.items():
            if not impl.requires.installed():  # planned from its source (COAP, Adalayer)
                assert impl.requires.source, info.id
                continue
            options = {**info.defaults, **({"impl": impl_key} if impl_key else {})}
            assert set(info.constructor(options)) <= set(_init_args(info, impl)), (info.id, impl_key)


def _word(value):
    return "none" if value is None else str(value).lower()


def _init_args(info, impl):
    import inspect

    return [p for p in inspect.signature(info.load(impl.implementation).__init__).parameters
            if p not in ("self", "params")]


def test_paper_names_map_to_the_families_the_paper_ran():
    assert {n: by_paper_name(n).id for n in ("Adam", "Adafactor", "CAME", "SM3", "SMMF")} == {
        "Adam": "adam", "Adafactor": "adafactor", "CAME": "came", "SM3": "sm3", "SMMF": "smmf"}
    # the paper ran Adafactor with beta1 = 0.9: the family's default
    assert parse(by_paper_name("Adafactor").id).options["beta1"] == 0.9
    with pytest.raises(KeyError):
        by_paper_name("AdamW")


def test_interval_and_option_words():
    assert str(Interval(0, 1, high_closed=False)) == "[0, 1)"
    assert str(Interval(0, None)) == "[0, inf)"
    assert 1 not in Interval(0, 1, high_closed=False) and 0 in Interval(0, 1, high_closed=False)
    assert Option(None, "float|none", "x", Interval(0, 1)).valid == "[0, 1] or none"


def _toy_info(**kw) -> OptimizerInfo:
    """A family written the way a new module would be, to check the planner's handling of groups
    and shared tensors by hand."""
    def state(o, spec, group):
        out = [StateTensor("qmap", (256,), "float32", shared=True)]
        if group == "matrices":
            out.append(StateTensor("momentum_buffer", spec.shape, "float32"))
        return out

    def groups(o, specs):
        two_d = tuple(i for i, s in enumerate(specs) if len(s.shape) == 2)
        rest = tuple(i for i in range(len(specs)) if i not in two_d)
        return [ParamGroup("matrices", two_d, {"use_muon": True}), ParamGroup("rest", rest)]

    fields = dict(id="toy", display_name="Toy", summary="toy", implementation="torch.optim:SGD",
                  requires=Requirement("torch", "torch"), reproduces="-", verified="-", state=state,
                  temporaries={"for-loop": lambda o, s, q: 0}, paths={"cpu": ("for-loop",),
                  "cuda": ("for-loop",)}, probe_lr=1e-3, constructor=lambda o: {"lr": 0.1},
                  groups=groups)
    fields.update(kw)
    return OptimizerInfo(**fields)


def test_groups_pick_each_parameters_state_and_shared_tensors_count_once():
    variant = OptimizerVariant(_toy_info())
    specs = [ParamSpec("w", (8, 4)), ParamSpec("b", (4,)), ParamSpec("v", (3, 5)),
             ParamSpec("frozen", (100, 100), trainable=False)]
    plan = plan_state(specs, variant)
    # one 256-float qmap for the optimizer, plus momentum for the two matrices
    assert plan.state_bytes == 4 * 256 + 4 * (8 * 4 + 3 * 5)
    assert plan.num_state_tensors == 1 + 2
    # each parameter's own view includes the shared map
    assert plan.per_param == [4 * 256 + 4 * 32, 4 * 256, 4 * 256 + 4 * 15]
    assert variant.group_names(specs[:3]) == ["matrices", "rest", "matrices"]


def test_groups_become_torch_param_groups():
    import torch

    variant = OptimizerVariant(_toy_info())
    named = [("w", torch.nn.Parameter(torch.zeros(8, 4))), ("b", torch.nn.Parameter(torch.zeros(4)))]
    opt = variant.build(named)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[0]["use_muon"] is True and opt.param_groups[0]["params"][0] is named[0][1]
    assert "use_muon" not in opt.param_groups[1] and opt.param_groups[1]["lr"] == 0.1


def test_registry_and_warm_plan_import_no_torch(tmp_path, monkeypatch):
    from smmf_plan.sources import load_model

    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path))
    assert load_model("resnet50").meta["cache"] == "miss"  # fills the shape cache
    code = ("import json, sys, atexit\n"
            "atexit.register(lambda: print(json.dumps(sorted(m for m in ('torch', 'timm', "
            "'transformers') if m in sys.modules)), file=sys.stderr))\n"
            "from smmf_plan.cli import main\n"
            "main(sys.argv[1:])\n")
    for args in (["optimizers", "--json"], ["resnet50", "--json"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           env={**os.environ, "SMMF_PLAN_CACHE_DIR": str(tmp_path)})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["schema_version"] == 2
        assert json.loads(r.stderr.strip().splitlines()[-1]) == [], args
