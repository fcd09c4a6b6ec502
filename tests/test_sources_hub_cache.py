"""Hub ids offline/unreachable, and the shape cache (atomic JSON, no torch on a hit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from smmf_plan.errors import OfflineError
from smmf_plan.sources import cache, load_model


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- hub
def test_offline_hub_id_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as e:
        load_model("someone-unknown/never-cached-model-xyz", use_cache=False)
    msg = str(e.value)
    assert "is not cached and HF_HUB_OFFLINE is set" in msg and "\n" not in msg


def test_offline_hub_id_from_local_hub_cache(tmp_path):
    """A config.json in the huggingface_hub cache layout is used offline."""
    from smmf_plan.sources.registry import bundled_config

    snap = tmp_path / "hub" / "models--someone--tiny-gpt2" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "hub" / "models--someone--tiny-gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-gpt2" / "refs" / "main").write_text("a" * 40)
    cfg = bundled_config("gpt2")
    (snap / "config.json").write_text(json.dumps(cfg))
    r = _run("""
        from smmf_plan.sources import load_model
        s = load_model("someone/tiny-gpt2", use_cache=False)
        print(s.source, s.num_params, s.meta["architecture"], s.meta["hub_id"])
    """, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hub", "124439808", "GPT2LMHeadModel", "someone/tiny-gpt2"]


def test_unreachable_hub_is_one_clear_line():
    r = _run("""
        from smmf_plan.sources import load_model
        from smmf_plan.errors import SourceError
        try:
            load_model("someone/some-model", use_cache=False)
        except SourceError as e:
            print("ERR", e)
    """, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": "/nonexistent-hub-cache"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR could not reach the Hugging Face hub for someone/some-model")
    assert len(r.stdout.strip().splitlines()) == 1


# --------------------------------------------------------------------------- cache
def _tiny_safetensors(path):
    """A real two-tensor safetensors file written without torch."""
    import struct

    hdr = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                      "bn.running_mean": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}}).encode()
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 32)


def test_cache_roundtrip_and_invalidation(monkeypatch, tmp_path):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.safetensors"
    _tiny_safetensors(f)
    a = load_model(str(f), freeze=["w"])
    assert a.meta["cache"] == "miss"
    b = load_model(str(f), freeze=["w"])
    assert b.meta["cache"] == "hit"
    assert b.params == a.params and b.name == a.name and b.meta["buffers"] == 1
    assert not b.params[0].trainable
    entries = list((tmp_path / "cache" / "specs").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".json"
    # different options → different entry
    assert load_model(str(f)).meta["cache"] == "miss"
    # the file changes → rebuilt
    os.utime(f, ns=(1, 1))
    assert load_model(str(f), freeze=["w"]).meta["cache"] == "miss"


def test_corrupt_cache_entry_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.safetensors"
    _tiny_safetensors(f)
    load_model(str(f))
    (entry,) = (tmp_path / "cache" / "specs").iterdir()
    for junk in (b"{not json", b'{"key": "x", "spec": {}}', b"[]", b""):
        entry.write_bytes(junk)
        spec = load_model(str(f))
        assert spec.meta["cache"] == "miss" and spec.num_params == 6
        assert json.loads(entry.read_text())["spec"]["params"][0]["name"] == "w"


def test_cache_location_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SMMF_PLAN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == str(tmp_path / "xdg" / "smmf-plan")
    monkeypatch.setenv("SMMF_PLAN_CACHE_DIR", str(tmp_path / "own"))
    assert cache.cache_dir() == str(tmp_path / "own")


def test_cache_hit_imports_no_torch(tmp_path):
    env = {"SMMF_PLAN_CACHE_DIR": str(tmp_path / "cache")}
    code = """
        import sys
        from smmf_plan.sources import load_model
        s = load_model("resnet50")
        heavy = sorted(m for m in ("torch", "timm", "transformers") if m in sys.modules)
        print(s.meta["cache"], s.num_params, ",".join(heavy) or "-")
    """
    first = _run(code, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[:2] == ["miss", "25557032"]
    second = _run(code, env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["hit", "25557032", "-"]


def test_one_atomic_writer_raises_and_only_the_cache_ignores_failures(tmp_path):
    """The writer reports a failed write; the cache (an accelerator) is the caller that ignores it."""
    from smmf_plan.atomic import write_json_atomic

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    target = blocker / "entry.json"
    with pytest.raises(OSError):
        write_json_atomic(target, {"a": 1}, make_dirs=True)
    cache.store_json(str(target), {"a": 1})  # ignored, and nothing half-written anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]
    good = tmp_path / "sub" / "entry.json"
    cache.store_json(str(good), {"a": [1, 2]})
    assert good.read_text() == '{"a":[1,2]}\n'
