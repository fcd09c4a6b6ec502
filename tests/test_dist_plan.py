"""Per-rank plans (smmf_plan.dist): the arithmetic checked against independent oracles — torch's own
chunk and bucket-assignment functions, the registry's single-process layouts — and the CLI's
grouping, JSON and bad-input rules. The engines themselves are run in test_dist_engines.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_run import isolated_cache, run  # noqa: F401 - isolated_cache is an autouse fixture
from smmf_plan.dist import Context, Sharding, ddp, fsdp2, plan_ranks, zero
from smmf_plan.errors import PlanError
from smmf_plan.optimizers import FAMILIES, parse
from smmf_plan.shapes import ParamSpec, square_matricize

ROOT = Path(__file__).resolve().parents[1]
MLP = (32, 96, 251, 128, 10)


def mlp_specs(dtype: str = "float32") -> tuple[ParamSpec, ...]:
    out = []
    for i, (a, b) in enumerate(zip(MLP, MLP[1:])):
        out += [ParamSpec(f"{i}.weight", (b, a), dtype), ParamSpec(f"{i}.bias", (b,), dtype)]
    return tuple(out)


# ------------------------------------------------------------------ FSDP2's dim-0 chunk rule
@pytest.mark.parametrize("d0", [1, 5, 10, 251, 256, 1000, 32000])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 8, 64, 1024])
def test_local_rows_are_torch_chunk(d0, world):
    """Rank r's rows are torch.chunk's r-th chunk, or none past the last chunk (FSDP2's
    _chunk_with_empty); the padded storage is chunk 0's."""
    chunks = torch.chunk(torch.empty(d0, 3, device="meta"), world, dim=0)
    want = [c.shape[0] for c in chunks] + [0] * (world - len(chunks))
    assert [fsdp2.local_rows(d0, world, r) for r in range(world)] == want
    assert fsdp2.padded_numel((d0, 3), world) == chunks[0].numel()
    assert sum(want) == d0


@pytest.mark.parametrize("world", [2, 3, 8, 64, 1000])
def test_rank_intervals_hold_identical_local_shapes(world):
    """The grouped intervals cover every rank once, and within one every parameter's local shape
    is the same (checked rank by rank against torch.chunk)."""
    shapes = [(10, 128), (251, 96), (96,), (32000, 8), (7, 7, 3, 3)]
    intervals = fsdp2.boundaries(shapes, world)
    assert intervals[0][0] == 0 and intervals[-1][1] == world - 1
    assert all(b + 1 == c for (_, b), (c, _) in zip(intervals, intervals[1:]))

    def oracle(shape, r):
        chunks = torch.chunk(torch.empty(shape, device="meta"), world, dim=0)
        return tuple(chunks[r].shape) if r < len(chunks) else (0,) + shape[1:]

    for first, last in intervals:
        for shape in shapes:
            assert {oracle(shape, r) for r in range(first, last + 1)} == \
                {fsdp2.local_shape(shape, world, first)}


# ------------------------------------------------------------------ the registry's shard rule
@pytest.mark.parametrize("oid", ["adam", "adamw", "adafactor", "came", "sm3", "adam:amsgrad=true"])
def test_default_shard_state_is_the_layout_of_the_local_shard(oid):
    """Optimizers that see the shard as a tensor of their own keep their single-process layout
    of the local shape (Adam: local moments + step)."""
    v = parse(oid)
    spec = ParamSpec("w", (251, 96))
    for rows in (126, 63, 0):
        assert v.shard_state(spec, (rows, 96)) == v.state(ParamSpec("w", (rows, 96)))


@pytest.mark.parametrize("sign", ["packed", "bool"])
def test_smmf_shard_keeps_the_full_factors_and_its_own_sign(sign):
    v = parse(f"smmf:sign={sign}")
    spec = ParamSpec("w", (251, 96))
    n, m = square_matricize((251, 96))
    for rows in (126, 125, 0):
        tensors = {t.name: t for t in v.shard_state(spec, (rows, 96))}
        assert [tensors[k].shape for k in ("row_m", "col_m", "row_v", "col_v")] == [(n,), (m,)] * 2
        k = rows * 96
        assert tensors["sign"].nbytes == (math.ceil(k / 8) if sign == "packed" else k)


def test_every_family_has_a_shard_rule_and_says_where_it_does_not_run():
    from smmf_plan.optimizers.base import DOES_NOT_RUN

    stateless = {"sgd"}  # plain SGD (momentum 0) keeps nothing
    for info in FAMILIES.values():
        v = parse(info.id)
        # some state for a non-empty shard
        assert bool(v.shard_state(ParamSpec("w", (8, 4)), (2, 4))) is (info.id not in stateless)
        for scheme, note in info.dist_caveats.items():
            assert scheme in ("ddp", "fsdp2", "zero") and note.strip()
            assert not note.startswith(DOES_NOT_RUN) or "fails" in note


# ------------------------------------------------------------------ FSDP2 per rank
def test_fsdp2_adam_state_per_rank_is_local_moments_plus_step():
    specs = mlp_specs()
    ctx = Context(specs)
    for world in (1, 2, 4, 8):
        classes = plan_ranks(ctx, Sharding("fsdp2", world), parse("adam"))
        assert sum(c.count for c in classes) == world
        for c in classes:
            for a, b in c.ranges:
                for r in (a, b):
                    local = sum(fsdp2.local_rows(s.shape[0], world, r) * math.prod(s.shape[1:])
                                for s in specs)
                    assert c.figures.state_bytes == 8 * local + 4 * len(specs)
        # the storage is padded to chunk 0 on every rank
        padded = sum(math.ceil(s.shape[0] / world) * math.prod(s.shape[1:]) for s in specs)
        assert {c.figures.weights for c in classes} == {4 * padded}
        assert {c.figures.grads for c in classes} == {4 * padded}


def test_fsdp2_world_larger_than_rows_gives_empty_shards_not_an_error():
    specs = (ParamSpec("w", (10, 128)), ParamSpec("b", (10,)))
    classes = plan_ranks(Context(specs), Sharding("fsdp2", 16), parse("adam"))
    assert [(c.ranges, c.figures.state_bytes) for c in classes] == [
        (((0, 9),), 8 * 129 + 8), (((10, 15),), 8)]


def test_hsdp_repeats_the_shard_group_in_every_replica():
    specs = mlp_specs()
    classes = plan_ranks(Context(specs), Sharding("fsdp2", 16, nodes=2, shard_group=8),
                         parse("adam"))
    alone = plan_ranks(Context(specs), Sharding("fsdp2", 8), parse("adam"))
    assert [c.figures for c in classes] == [c.figures for c in alone]
    # shard rank r % 8: ranks 0-4 and 8-12 hold the same, 7 and 15 the least
    assert classes[0].ranges == ((0, 4), (8, 12)) and classes[-1].ranges == ((7, 7), (15, 15))
    assert sum(c.count for c in classes) == 16


def test_fsdp2_units_rule():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.mlp.up_proj.weight", "model.layers.1.input_layernorm.weight",
             "model.norm.weight", "lm_head.weight", "blocks.3.attn.qkv.weight", "0.weight"]
    assert [fsdp2.unit_of(n) for n in names] == [
        fsdp2.ROOT, "model.layers.0", "model.layers.0", "model.layers.1", fsdp2.ROOT, fsdp2.ROOT,
        "blocks.3", "0"]
    units = fsdp2.units([ParamSpec(n, (4, 4)) for n in names])
    assert [u.name for u in units] == ["model.layers.0", "model.layers.1", "blocks.3", "0",
                                       fsdp2.ROOT]
    assert units[-1].indices == (0, 4, 5)


def test_fsdp2_transients_follow_the_stated_rule():
    """Root + the largest of (unit + neighbour + its all-gather) and (unit + prefetched unit +
    unsharded grads + reduce-scatter input), here with four equal units and no root
    parameters: 4 units × 4 B × 1000 = 4000 B each; the reduce-scatter input padded to world."""
    specs = tuple(ParamSpec(f"layers.{i}.w", (1000,)) for i in range(4))
    ctx = Context(specs)
    got = fsdp2.transient_bytes(ctx, Sharding("fsdp2", 3), fsdp2.units(specs))
    padded = 3 * math.ceil(1000 / 3) * 4  # 4008: gathered and reduce-scatter sizes
    assert got == max(3 * padded, 2 * padded + 4000 + padded)
    everything = fsdp2.transient_bytes(ctx, Sharding("fsdp2", 3, reshard_after_forward=False),
                                       fsdp2.units(specs))
    assert everything == 4 * padded + 4000 + padded


def test_fsdp2_rejects_0d_parameters():
    with pytest.raises(PlanError, match="0-d parameter 'scale'"):
        plan_ranks(Context((ParamSpec("scale", ()),)), Sharding("fsdp2", 2), parse("adam"))


# ------------------------------------------------------------------ DDP and ZeRO
def test_ddp_buckets_are_torchs_assignment():
    """The bucket sizes equal torch's own assignment (C++ compute_bucket_assignment_by_size)
    over the gradients in the order they become ready, first bucket 1 MiB, then 25 MiB."""
    shapes = [(50257, 768), (1024, 768)] + [(768, 2304), (2304,), (768, 768), (768,)] * 6
    specs = [ParamSpec(f"p{i}", s) for i, s in enumerate(shapes)]
    tensors = [torch.empty(s, device="meta") for s in reversed(shapes)]
    groups, _ = torch.distributed._compute_bucket_assignment_by_size(
        tensors, [1 << 20, 25 << 20], [False] * len(tensors))
    want = sorted(sum(tensors[i].numel() * 4 for i in g) for g in groups)
    assert sorted(ddp.buckets(specs)) == want
    assert sum(want) == sum(s.nbytes for s in specs)


def test_zero_partitions_are_flat_and_aligned():
    specs = mlp_specs()  # 61,061 elements
    ctx = Context(specs, amp="bfloat16")
    for world in (1, 2, 3, 8):
        c = zero.components(ctx, Sharding("zero2", world), parse("adamw"))
        aligned = math.ceil(61061 / (2 * world)) * 2 * world
        assert c.params == 2 * aligned and c.master == 4 * aligned // world
        # the client optimizer sees one flat fp32 tensor of the partition
        assert c.state_bytes == 8 * aligned // world + 4
    c3 = zero.components(ctx, Sharding("zero3", 3), parse("adamw"))
    part = sum(math.ceil(s.numel / 3) for s in specs)
    assert c3.master == 4 * part and c3.state_bytes == 8 * part + 4
    assert c3.persistent == 2 * 61061  # every tensor is under the 1e5-element threshold


def test_zero_hands_factored_optimizers_a_flat_tensor():
    """Under ZeRO Adafactor sees a 1-D tensor: no factorization, a full second moment; SMMF
    square-matricizes the flat partition."""
    ctx = Context(mlp_specs())
    flat = zero.components(ctx, Sharding("zero1", 2), parse("adafactor:beta1=none"))
    part = math.ceil(61061 / 4) * 4 // 2
    assert flat.state_bytes == 4 * part + 4
    smmf = zero.components(ctx, Sharding("zero1", 2), parse("smmf"))
    n, m = square_matricize(part)
    assert smmf.state_bytes == 4 * 2 * (n + m) + math.ceil(part / 8)


# ------------------------------------------------------------------ sharding and the CLI
@pytest.mark.parametrize("args, message", [
    (["--world", "0"], "--world needs --dist"),
    (["--world", "4"], "--world needs --dist"),
    (["--dist", "fsdp2", "--world", "0"], "--world 0 is not a number of ranks"),
    (["--dist", "fsdp", "--world", "4"], "unknown --dist 'fsdp'; did you mean fsdp2?"),
    (["--dist", "fsdp2", "--world", "8", "--nodes", "3"], "--nodes 3 does not divide --world 8"),
    (["--dist", "fsdp2", "--world", "8", "--shard-group", "3"],
     "--shard-group 3 does not divide --world 8"),
    (["--dist", "zero3", "--world", "8", "--shard-group", "4"], "applies to --dist fsdp2"),
    (["--dist", "fsdp2"], "--dist fsdp2 needs --world N"),
    (["--bucket-cap-mb", "5"], "--bucket-cap-mb needs --dist: add e.g. --dist ddp"),
    (["--dist", "fsdp2", "--world", "2", "--bucket-cap-mb", "5"], "not fsdp2's"),
    (["--dist", "ddp", "--world", "2", "--bucket-cap-mb", "0"], "--bucket-cap-mb 0 is not a bucket size"),
    (["--dist", "zero3", "--world", "2", "--no-reshard-after-forward"],
     "--no-reshard-after-forward is an fsdp2 setting, not zero3's"),
])
def test_bad_distributed_input_is_one_line_exit_2(args, message, capsys):
    code, out, err = run(["plan", "gpt2", *args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_size_bad_input_is_one_line_exit_2(capsys):
    code, _, err = run(["size", "gpt2", "--world", "4"], capsys)
    assert code == 2 and "--world needs --dist" in err and err.count("\n") == 1


def test_engine_settings_reach_the_plan(capsys):
    """--no-reshard-after-forward keeps every unit gathered (more comm. on each rank than the
    default); --bucket-cap-mb is DDP's setting, recorded beside the plan."""
    comm = {}
    for flag in ([], ["--no-reshard-after-forward"]):
        code, out, _ = run(["gpt2", "--dist", "fsdp2", "--world", "4", "-o", "adam", "--json",
                            *flag], capsys)
        assert code == 0
        doc = json.loads(out)
        comm[bool(flag)] = doc["optimizers"]["adam"]["breakdown"]["comm"]
        assert doc["training"]["sharding"]["settings"] == {"reshard_after_forward": not flag}
    assert comm[True] > comm[False]
    code, out, _ = run(["gpt2", "--dist", "ddp", "--world", "2", "-o", "adam", "--json",
                        "--bucket-cap-mb", "100"], capsys)
    assert code == 0
    assert json.loads(out)["training"]["sharding"]["settings"]["bucket_cap_mb"] == 100


def test_plan_json_ranks_grouped_and_top_level_is_the_largest(capsys):
    code, out, _ = run(["gpt2", "--dist", "fsdp2", "--world", "1024", "-o", "adam,smmf",
                        "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["training"]["sharding"]["world"] == 1024
    for oid, entry in doc["optimizers"].items():
        ranks = entry["ranks"]
        assert 1 < len(ranks) <= 8  # distinct rank shapes, not 1,024 rows
        assert sum(r["count"] for r in ranks) == 1024
        covered = sorted(i for r in ranks for a, b in r["ranks"] for i in range(a, b + 1))
        assert covered == list(range(1024))
        for r in ranks:
            assert r["total_bytes"] == sum(r["breakdown"].values())
        top = max(ranks, key=lambda r: r["total_bytes"])
        assert entry["total_bytes"] == top["total_bytes"] and entry["breakdown"] == top["breakdown"]
        assert ranks[0]["ranks"][0][0] == 0 and entry["state_bytes"] == ranks[0]["state_bytes"]
        assert entry["model_state_bytes"] > entry["state_bytes"]
    # Adam per rank: exactly the local moments + one step per tensor (gpt2: 148 tensors)
    adam = doc["optimizers"]["adam"]["ranks"]
    assert adam[-1]["state_bytes"] < adam[0]["state_bytes"]


def test_plan_table_shows_largest_and_smallest_rank(capsys):
    code, out, _ = run(["gpt2", "--dist", "fsdp2", "--world", "1024", "-o", "adam"], capsys)
    assert code == 0
    assert "Distributed: fsdp2 over 1,024 ranks" in out
    # the state table before the per-rank ones is the unsharded model's, and says so
    assert "Optimizer state (whole model, one process)" in out
    assert "▲ largest" in out and "▼ smallest" in out and "0-767" in out
    assert len([line for line in out.splitlines() if "1006-1023" in line]) == 1


def test_ddp_and_zero_plans_cover_every_rank(capsys):
    for scheme in ("ddp", "zero1", "zero2", "zero3"):
        code, out, _ = run(["gpt2", "--dist", scheme, "--world", "4", "--nodes", "2", "-o",
                            "adamw", "--json"], capsys)
        assert code == 0
        entry = json.loads(out)["optimizers"]["adamw"]
        assert [r["ranks"] for r in entry["ranks"]] == [[[0, 3]]]
        assert ("master" in entry["breakdown"]) is scheme.startswith("zero")
        assert entry["breakdown"]["comm"] > 0


def test_size_finds_the_smallest_number_of_each_gpu(capsys):
    """LLaMA-2-7B full fine-tune with AMP: AdamW needs more A100s than SMMF, and the answer is
    the smallest world whose largest rank fits (one fewer does not)."""
    code, out, _ = run(["size", "llama-2-7b", "--dist", "fsdp2", "--amp", "bf16", "-o",
                        "adamw,smmf", "-d", "a100-40gb", "-d", "h100-80gb", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    worlds = doc["optimizers"]["adamw"]["smallest_world"]
    assert worlds["a100-40gb"] > worlds["h100-80gb"] >= 1
    assert doc["optimizers"]["smmf"]["smallest_world"]["a100-40gb"] < worlds["a100-40gb"]
    for row in doc["devices"]:
        usable = row["device"]["usable_bytes"]
        for oid, answer in row["optimizers"].items():
            assert answer["fits"] and answer["total_bytes"] <= usable
            assert answer["headroom_bytes"] == usable - answer["total_bytes"]
            assert sum(r["count"] for r in answer["ranks"]) == answer["world"]
            if answer["world"] > 1:  # one rank fewer does not fit
                code, out, _ = run(["size", "llama-2-7b", "--dist", "fsdp2", "--amp", "bf16", "-o",
                                    oid, "-d", row["device"]["id"], "--world",
                                    str(answer["world"] - 1), "--json"], capsys)
                assert json.loads(out)["devices"][0]["optimizers"][oid]["fits"] is False


def test_check_plans_the_largest_rank(tmp_path, capsys):
    cfg = tmp_path / "smmf.toml"
    cfg.write_text('[[checks]]\nname = "gpt2-fsdp2"\nmodel = "gpt2"\noptimizer = "adam"\n'
                   'dist = "fsdp2"\nworld = 8\ndevice = "h100-80gb"\n'
                   'reshard-after-forward = true\n')
    code, out, _ = run(["check", "--config", str(cfg), "--json"], capsys)
    assert code == 0, out
    doc = json.loads(out)
    check = doc["checks"][0]
    assert check["dist"]["world"] == 8 and check["training"]["sharding"]["world"] == 8
    state = next(r for r in doc["results"] if r["metric"] == "state")["now_bytes"]
    # gpt2's Adam state over 8 ranks: the largest rank's local moments + 148 steps
    from smmf_plan.sources import load_model

    spec = load_model("gpt2")
    local = sum(fsdp2.local_rows(p.shape[0], 8, 0) * math.prod(p.shape[1:]) for p in spec.trainable)
    assert state == 8 * local + 4 * len(spec.trainable)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[checks]]\nmodel = "gpt2"\nworld = 8\n')
    code, _, err = run(["check", "--config", str(bad)], capsys)
    assert code == 2 and "world needs dist" in err and err.count("\n") == 1
    bad.write_text('[[checks]]\nmodel = "gpt2"\ndist = "zero2"\nworld = 8\n'
                   'reshard-after-forward = false\n')
    code, _, err = run(["check", "--config", str(bad)], capsys)
    assert code == 2 and "an fsdp2 setting, not zero2's" in err and err.count("\n") == 1


def _write_70b(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_planner
    finally:
        sys.path.pop(0)
    bench_planner.write_checkpoint(folder)


def test_70b_at_64_ranks_plans_without_torch(tmp_path):
    """LLaMA-2-70B shapes (a headers-only checkpoint), fsdp2 over 64 ranks: planned from the
    shape cache in a fresh process that never imports torch (speed: bench/bench_planner.py)."""
    _write_70b(tmp_path)
    index = str(tmp_path / "model.safetensors.index.json")
    env = {**os.environ, "SMMF_PLAN_CACHE_DIR": str(tmp_path / "cache")}
    code = (f"import sys, json\nfrom smmf_plan.cli import main\n"
            f"try:\n    main([{index!r}, '--dist', 'fsdp2', '--world', '64', '--dtype', 'fp32', "
            f"'-o', 'adamw,smmf', '-d', 'h100-80gb', '--json'])\nexcept SystemExit:\n    pass\n"
            f"print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert "TORCH False" in r.stderr, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    adamw = doc["optimizers"]["adamw"]
    # 68,976,648,192 fp32 parameters over 64 ranks: every dimension divides evenly
    assert [r_["ranks"] for r_ in adamw["ranks"]] == [[[0, 63]]]
    assert adamw["state_bytes"] == 8 * 68_976_648_192 // 64 + 4 * 723
