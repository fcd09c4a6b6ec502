"""Checkpoint sources: real safetensors (single, sharded), torch state dicts, config beside weights,
malformed headers, pickles that would run code, empty directories."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import pytest
import torch
from torch import nn

from smmf_plan.errors import SourceError
from smmf_plan.sources import load_model
from smmf_plan.sources.module import specs_from_module


class Tiny(nn.Module):
    """A tiny real model with parameters and every kind of buffer (float stats, int counter)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.fc = nn.Linear(8, 5)
        self.emb = nn.Embedding(11, 8)


def _params(model):
    return [(n, tuple(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in model.named_parameters()]


def _got(spec):
    return [(p.name, p.shape, p.dtype) for p in spec.params]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny()


def test_safetensors_single_file_equals_named_parameters(tmp_path, tiny):
    from safetensors.torch import save_file

    sd = tiny.state_dict()
    assert "bn.running_mean" in sd and "bn.num_batches_tracked" in sd
    save_file(sd, tmp_path / "model.safetensors")
    spec = load_model(str(tmp_path / "model.safetensors"), use_cache=False)
    assert spec.source == "safetensors"
    assert sorted(_got(spec)) == sorted(_params(tiny))
    assert spec.meta["buffers"] == 3
    assert spec.num_params == sum(p.numel() for p in tiny.parameters())


def test_safetensors_bf16_dtype_is_kept(tmp_path, tiny):
    from safetensors.torch import save_file

    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny.state_dict().items()},
              tmp_path / "m.safetensors")
    spec = load_model(str(tmp_path / "m.safetensors"), use_cache=False)
    assert {p.dtype for p in spec.params} == {"bfloat16"}


def _write_sharded(tmp_path, sd):
    from safetensors.torch import save_file

    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    wm = {}
    for shard, keys in halves.items():
        save_file({k: sd[k].contiguous() for k in keys}, tmp_path / shard)
        wm.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))


def test_sharded_safetensors(tmp_path, tiny):
    _write_sharded(tmp_path, tiny.state_dict())
    for src in (tmp_path / "model.safetensors.index.json", tmp_path):
        spec = load_model(str(src), use_cache=False)
        assert sorted(_got(spec)) == sorted(_params(tiny))
        assert spec.meta["buffers"] == 3


def test_sharded_missing_shard(tmp_path, tiny):
    _write_sharded(tmp_path, tiny.state_dict())
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(SourceError, match="missing"):
        load_model(str(tmp_path), use_cache=False)


def test_torch_state_dict_with_tied_weights_and_wrapper(tmp_path, tiny):
    tiny.fc2 = nn.Linear(8, 11, bias=False)
    tiny.fc2.weight = tiny.emb.weight  # tied: one Parameter under two names
    torch.save({"state_dict": tiny.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    spec = load_model(str(tmp_path / "ckpt.pt"), use_cache=False)
    assert spec.source == "state_dict"
    assert sorted((p.name, p.shape, p.dtype) for p in spec.params) == sorted(_params(tiny))
    emb = next(p for p in spec.params if p.name in ("emb.weight", "fc2.weight"))
    assert set((emb.name, *emb.aliases)) == {"emb.weight", "fc2.weight"}
    assert spec.num_params == sum(p.numel() for p in tiny.parameters())


def test_bin_and_pth_suffixes(tmp_path, tiny):
    for name in ("pytorch_model.bin", "w.pth"):
        torch.save(tiny.state_dict(), tmp_path / name)
        assert sorted(_got(load_model(str(tmp_path / name), use_cache=False))) == sorted(_params(tiny))


def _tiny_gpt2_dir(tmp_path, safe=True):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=16)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    return model


def test_config_beside_weights_uses_the_architecture(tmp_path):
    model = _tiny_gpt2_dir(tmp_path)
    spec = load_model(str(tmp_path), use_cache=False)
    assert spec.source == "safetensors"
    assert spec.params == specs_from_module(model)  # tied lm_head once, as the optimizer sees it
    assert spec.meta["params_decided_by"] == "architecture"
    assert spec.meta["architecture"] == "GPT2LMHeadModel"
    assert spec.meta["task"] == "causal-lm"


def test_config_beside_fp16_weights_keeps_checkpoint_dtype(tmp_path):
    from safetensors.torch import save_file

    model = _tiny_gpt2_dir(tmp_path)
    sd = {k: v.half() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, tmp_path / "model.safetensors")
    spec = load_model(str(tmp_path / "model.safetensors"), use_cache=False)
    assert {p.dtype for p in spec.params} == {"float16"}
    assert spec.num_params == sum(p.numel() for p in model.parameters())


def test_gpt2_style_causal_mask_is_a_buffer_without_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"h.0.attn.bias": torch.ones(1, 1, 4, 4), "h.0.attn.c_attn.bias": torch.zeros(12),
               "h.0.attn.masked_bias": torch.tensor(-1e4), "h.0.attn.c_attn.weight": torch.zeros(4, 12)},
              tmp_path / "g.safetensors")
    spec = load_model(str(tmp_path / "g.safetensors"), use_cache=False)
    assert sorted(p.name for p in spec.params) == ["h.0.attn.c_attn.bias", "h.0.attn.c_attn.weight"]
    assert spec.meta["buffers"] == 2


# --------------------------------------------------------------------------- malformed headers
def _raw(tmp_path, header: bytes, data: bytes = b"", length: int | None = None):
    p = tmp_path / "bad.safetensors"
    n = len(header) if length is None else length
    p.write_bytes(struct.pack("<Q", n) + header + data)
    return str(p)


def _hdr(**entries):
    return json.dumps(entries).encode()


MALFORMED = {
    "length beyond file": (lambda t: _raw(t, b"{}", length=10**12), "beyond the file"),
    "non-JSON": (lambda t: _raw(t, b"\x00not json at all"), "not JSON"),
    "JSON array": (lambda t: _raw(t, b"[1, 2]"), "not a JSON object"),
    "unknown dtype": (lambda t: _raw(t, _hdr(w={"dtype": "F17", "shape": [2], "data_offsets": [0, 8]}), b"\0" * 8),
                      "unknown dtype"),
    "negative shape": (lambda t: _raw(t, _hdr(w={"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}), b"\0" * 8),
                       "negative dimension"),
    "overflowing shape": (lambda t: _raw(t, _hdr(w={"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}),
                                         b"\0" * 8), "needs"),
    "float shape": (lambda t: _raw(t, _hdr(w={"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}), b"\0" * 8),
                    "not a list of integers"),
    "offsets outside file": (lambda t: _raw(t, _hdr(w={"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}), b"\0" * 8),
                             "outside"),
    "offsets inconsistent": (lambda t: _raw(t, _hdr(w={"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}), b"\0" * 12),
                             "needs 12 bytes"),
    "offsets reversed": (lambda t: _raw(t, _hdr(w={"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}), b"\0" * 8),
                         "out of order"),
    "overlapping": (lambda t: _raw(t, _hdr(a={"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                           b={"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}), b"\0" * 12),
                    "overlapping"),
    "truncated": (lambda t: _raw(t, b"", length=None)[:0] or str(_short(t)), "shorter"),
}


def _short(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01\x02")
    return p


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_is_one_line_source_error(tmp_path, case):
    make, fragment = MALFORMED[case]
    path = make(tmp_path)
    with pytest.raises(SourceError) as e:
        load_model(path, use_cache=False)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg


def test_claimed_length_allocates_nothing_proportional(tmp_path):
    from smmf_plan.sources.safetensors_header import read_header

    path = _raw(tmp_path, b"{}", length=2**40)
    tracemalloc.start()
    with pytest.raises(SourceError):
        read_header(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20


def test_malformed_safetensors_cli_exit_2(tmp_path, capsys):
    import smmf_plan.cli

    path = _raw(tmp_path, b"{oops")
    with pytest.raises(SystemExit) as e:
        smmf_plan.cli.main([path, "--no-cache"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- pickles that run code
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_evil_pickle_would_run_code_when_unpickled_plainly(tmp_path):
    """Proves the payload used below is live (so the refusal tests can fail)."""
    marker = tmp_path / "plain-marker"
    blob = pickle.dumps(_Evil(marker), protocol=2)
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=blob, check=True)
    assert marker.exists()


def test_legacy_pickle_running_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(SourceError) as e:
        load_model(str(tmp_path / "evil.pt"), use_cache=False)
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_zip_checkpoint_with_code_in_data_pkl_is_refused(tmp_path):
    marker = tmp_path / "marker"
    good = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, good)
    evil = tmp_path / "evil.bin"
    with zipfile.ZipFile(io.BytesIO(good.getvalue())) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(_Evil(marker), protocol=2)
            zout.writestr(item, data)
    with pytest.raises(SourceError, match="refused"):
        load_model(str(evil), use_cache=False)
    assert not marker.exists()


def test_garbage_torch_file(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(SourceError):
        load_model(str(tmp_path / "x.pt"), use_cache=False)


# --------------------------------------------------------------------------- directories
def test_empty_directory(tmp_path):
    with pytest.raises(SourceError, match="neither config.json nor weights"):
        load_model(str(tmp_path), use_cache=False)
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(SourceError, match="neither config.json nor weights"):
        load_model(str(tmp_path), use_cache=False)


def test_empty_directory_cli_exit_2(tmp_path, capsys):
    import smmf_plan.cli

    with pytest.raises(SystemExit) as e:
        smmf_plan.cli.main([str(tmp_path), "--no-cache"])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------- --num-classes
def test_num_classes_resizes_the_head_of_a_checkpoint_with_config(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=8, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    two = load_model(str(tmp_path), use_cache=False)
    assert next(p for p in two.params if p.name == "classifier.weight").shape == (2, 16)
    five = load_model(str(tmp_path), num_classes=5, use_cache=False)
    assert next(p for p in five.params if p.name == "classifier.weight").shape == (5, 16)
    assert five.num_params == two.num_params + 3 * 16 + 3
    assert five.meta["reshaped_by_num_classes"] == ["classifier.weight", "classifier.bias"]
    with pytest.raises(SourceError, match="does not match the weights"):
        cfg.num_labels = 7
        (tmp_path / "config.json").write_text(cfg.to_json_string())
        load_model(str(tmp_path), use_cache=False)


def test_num_classes_without_config_is_an_error(tmp_path, tiny):
    from safetensors.torch import save_file

    from smmf_plan.errors import PlanError

    save_file(tiny.state_dict(), tmp_path / "m.safetensors")
    with pytest.raises(PlanError, match="--num-classes needs an architecture"):
        load_model(str(tmp_path / "m.safetensors"), num_classes=3, use_cache=False)


def test_a_file_is_named_as_the_file_and_a_directory_as_itself(tmp_path, tiny, capsys):
    """/x/run-3/model.safetensors is "run-3/model.safetensors", not "run-3"; the folder itself
    keeps its name (real CLI, JSON model.name)."""
    from safetensors.torch import save_file

    from smmf_plan.cli import main

    folder = tmp_path / "run-3"
    folder.mkdir()
    save_file(tiny.state_dict(), folder / "model.safetensors")
    torch.save(tiny.state_dict(), folder / "last.pt")

    def name(path):
        with pytest.raises(SystemExit) as e:
            main([str(path), "-o", "adam", "--json", "--no-cache"])
        out, err = capsys.readouterr()
        assert e.value.code == 0, err
        return json.loads(out)["model"]["name"]

    assert name(folder / "model.safetensors") == "run-3/model.safetensors"
    assert name(folder / "last.pt") == "run-3/last.pt"
    assert name(folder) == "run-3"
