"""The entries no package registry has, against their sources' formulas (their real code cannot
run in CI): COAP (github.com/bytedance/coap at deabc3a: ``rank = max(min(m, n) // ratio, 1)``, the
projection ``Vh`` (r, n) or its transpose (m, r), moments in the projected shape, the projection's
autograd ``.grad`` kept from the first update) and Adalayer (rosieyzh/optimizers-llm ``olmo/optim.py``
at a1f8a3f: a 0-d fp32 second moment per tensor, per-row for OLMo's ``ff_out``/``wte`` above
10 000 rows with the corrections, three scalars for ``att_proj``). Every expected shape below is
worked out from the source by hand. Where the code is importable (a user's install), the registry
walk in test_optimizers_exact.py runs it for real."""

from __future__ import annotations

from smmf_plan.optimizers import parse
from smmf_plan.shapes import ParamSpec


def _layout(oid, spec):
    return {t.name: (t.shape, t.dtype) for t in parse(oid).state(spec)}


def test_coap_tall_wide_and_rank_rules():
    tall = ParamSpec("layers.0.mlp.up.weight", (1024, 512), linear=True)
    assert _layout("coap", tall) == {  # m >= n: r = 512 // 2
        "projector.ortho_matrix": ((256, 512), "float32"),
        "projector.ortho_matrix.grad": ((256, 512), "float32"),
        "exp_avg": ((1024, 256), "float32"), "exp_avg_sq": ((1024, 256), "float32")}
    wide = ParamSpec("layers.0.mlp.down.weight", (512, 1024), "bfloat16", linear=True)
    assert _layout("coap", wide) == {  # m < n: the transpose (m, r), moments (r, n)
        "projector.ortho_matrix": ((512, 256), "bfloat16"),
        "projector.ortho_matrix.grad": ((512, 256), "bfloat16"),
        "exp_avg": ((256, 1024), "bfloat16"), "exp_avg_sq": ((256, 1024), "bfloat16")}
    small = ParamSpec("w", (100, 50), linear=True)
    assert _layout("coap:rank_ratio=none,rank=128", small)["exp_avg"] == ((100, 50), "float32")  # min(128, 50)
    assert _layout("coap:rank_ratio=64", small)["exp_avg"] == ((100, 1), "float32")  # max(50 // 64, 1)
    bias = ParamSpec("layers.0.mlp.up.bias", (1024,))
    assert _layout("coap", bias) == {"exp_avg": ((1024,), "float32"), "exp_avg_sq": ((1024,), "float32")}
    # bytes: 2 · 256·512 (projection and its grad) + 2 · 1024·256 (moments), fp32
    assert parse("coap").state_bytes(tall) == 4 * (2 * 256 * 512 + 2 * 1024 * 256)


def test_adalayer_scalars_and_corrections():
    w = ParamSpec("transformer.blocks.0.ff_proj.weight", (2048, 512), "bfloat16")
    assert _layout("adalayer", w) == {"step": ((), "float32"), "exp_avg": ((2048, 512), "bfloat16"),
                                      "exp_avg_sq": ((), "float32")}
    head = ParamSpec("transformer.ff_out.weight", (50304, 512))
    assert _layout("adalayer", head)["exp_avg_sq"] == ((), "float32")  # correction off by default
    assert _layout("adalayer:lastlayer_correction=true", head)["exp_avg_sq"] == ((50304,), "float32")
    small_head = ParamSpec("transformer.ff_out.weight", (10000, 512))  # the source wants > 10 000 rows
    assert _layout("adalayer:lastlayer_correction=true", small_head)["exp_avg_sq"] == ((), "float32")
    wte = ParamSpec("transformer.wte.weight", (50304, 512))
    assert _layout("adalayer:firstlayer_correction=true", wte)["exp_avg_sq"] == ((50304,), "float32")
    att = ParamSpec("transformer.blocks.0.att_proj.weight", (1536, 512))
    assert {k for k in _layout("adalayer:att_correction=true", att) if k.startswith("exp_avg_sq")} == {
        "exp_avg_sq.0", "exp_avg_sq.1", "exp_avg_sq.2"}
    # host step (4 B) + bf16 moment + the 0-d fp32 second moment
    assert parse("adalayer").state_bytes(w) == 4 + 2 * 2048 * 512 + 4


def test_neither_runs_without_its_source_and_both_say_where_it_is():
    for oid in ("coap", "adalayer"):
        hint = parse(oid).requires.install_hint()
        assert hint.startswith("not on PyPI") and parse(oid).requires.source in hint
