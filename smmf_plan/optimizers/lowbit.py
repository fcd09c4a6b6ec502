"""Low-bit AdamW: bitsandbytes' ``AdamW8bit`` (``adamw8bit``; ``:paged=true`` is
``PagedAdamW8bit``) and torchao's ``AdamW8bit`` (``adamw8bit:impl=torchao``), ``AdamW4bit``
(``adamw4bit``) and ``AdamWFp8`` (``adamwfp8``).

bitsandbytes (``bitsandbytes.optim.optimizer.Optimizer2State``): a parameter of at least
``min_8bit_size`` = 4096 elements keeps ``state1``/``state2`` as ``uint8`` of its shape, an fp32
``absmax1``/``absmax2`` per block of 256 elements, and ``qmap1``/``qmap2``: the signed and
unsigned dynamic quantile maps (256 fp32 each), one tensor each shared by every parameter.
Smaller parameters keep fp32 ``state1``/``state2``. The step counter is a Python int. Paged: on
CUDA, ``state1``/``state2`` of parameters with at least 10⁵ elements are unified memory (outside
``torch.cuda.memory_allocated``, paged to the host under pressure); on the CPU paging is ignored.

torchao (``torchao.optim``): ``exp_avg`` and ``exp_avg_sq`` are tensor subclasses, counted by
their inner tensors, for a parameter of at least 4096 elements divisible by the block: 8-bit
``codes`` (uint8, the parameter's shape) + ``scale`` (fp32 per 256) + ``qmap`` (256 fp32, one per
state); 4-bit ``codes`` (uint8, two codes a byte, flat) + ``scale`` (per 128) + ``qmap`` (16 fp32);
FP8 ``codes`` (float8_e4m3fn) + ``scale`` (per 256). Other parameters keep plain moments in their
dtype. ``step`` is a 0-d fp32 tensor on the host.

Step temporaries. bitsandbytes on the CPU dequantizes both states to fp32, steps in fp32 and
re-quantizes, one parameter at a time (5 fp32 copies of the parameter alive at the peak, 3 for the
fp32-state path of small parameters, one more for a half-precision parameter; checked against
the RSS growth of real steps); on CUDA one fused kernel per parameter updates in place. torchao compiles one kernel per parameter shape with ``torch.compile`` on every device;
its buffers are not visible to a dispatch-level tracker, so the rule comes from the RSS growth of
compiled CPU steps (:data:`COMPILED_BYTES_PER_ELEMENT`; CUDA's compiled kernels are assumed to
hold the same).

Probe learning rate 1e-3, the implementations' default.
"""

from __future__ import annotations

from typing import Sequence

from .. import dtypes
from ..allocators import round_up
from ..shapes import ParamSpec
from .base import (
    VERIFIED_BY_TESTS,
    Implementation,
    OptimizerInfo,
    Option,
    Options,
    Requirement,
    StateTensor,
    UnknownOptimizer,
    param_dtype,
)

BNB = Requirement("bitsandbytes", "bitsandbytes", extra="compare")
TORCHAO = Requirement("torchao", "torchao", extra="compare")
BNB_BLOCK = 256
BNB_MIN_8BIT = 4096
BNB_PAGED_MIN = 100_000
TORCHAO_MIN = 4096
#: torchao's formats: block size, bytes per code, quantile-map length (0: none).
TORCHAO_FORMATS = {"8bit": (256, 1.0, 256), "4bit": (128, 0.5, 16), "fp8": (256, 1.0, 0)}


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def bnb_state(o: Options, spec: ParamSpec) -> list[StateTensor]:
    n = spec.numel
    if n < BNB_MIN_8BIT:
        return [StateTensor("state1", spec.shape, "float32"),
                StateTensor("state2", spec.shape, "float32")]
    paged = bool(o.get("paged")) and n >= BNB_PAGED_MIN
    return [
        StateTensor("state1", spec.shape, "uint8", paged=paged),
        StateTensor("qmap1", (256,), "float32", shared=True),
        StateTensor("state2", spec.shape, "uint8", paged=paged),
        StateTensor("qmap2", (256,), "float32", shared=True),
        StateTensor("absmax1", (_blocks(n, BNB_BLOCK),), "float32"),
        StateTensor("absmax2", (_blocks(n, BNB_BLOCK),), "float32"),
    ]


def torchao_state(fmt: str, spec: ParamSpec) -> list[StateTensor]:
    block, code_bytes, qmap = TORCHAO_FORMATS[fmt]
    n = spec.numel
    out = [StateTensor("step", (), "float32", on_host=True)]
    for name in ("exp_avg", "exp_avg_sq"):
        if n < TORCHAO_MIN or n % block:
            out.append(StateTensor(name, spec.shape, param_dtype(spec)))
            continue
        if fmt == "4bit":
            out.append(StateTensor(f"{name}.codes", (n // 2,), "uint8"))
        else:
            out.append(StateTensor(f"{name}.codes", spec.shape,
                                   "float8_e4m3fn" if fmt == "fp8" else "uint8"))
        out.append(StateTensor(f"{name}.scale", (n // block,), "float32"))
        if qmap:
            out.append(StateTensor(f"{name}.qmap", (qmap,), "float32"))
    return out


def _bnb_loop(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    """bitsandbytes' CPU path, one parameter at a time: fp32 copies of it: both dequantized
    states, the fp32 gradient and the square root with its bias-corrected quotient (5; the
    fp32-state path of small parameters: the gradient and the update's two terms, 3), plus the
    fp32 copy of a half-precision parameter."""
    peak = 0
    for s in specs:
        copies = 3 if s.numel < BNB_MIN_8BIT else 5
        if dtypes.canonical(s.dtype) in dtypes.HALF:
            copies += 1
        peak = max(peak, copies * round_up(s.numel * 4, quantum))
    return peak


def _compiled(fmt: str):
    """torchao's compiled step (one parameter at a time, quantized states only; a plain-moment
    parameter steps with fused AdamW arithmetic in place): :data:`COMPILED_BYTES_PER_ELEMENT`."""
    block = TORCHAO_FORMATS[fmt][0]

    def rule(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
        return max((round_up(int(COMPILED_BYTES_PER_ELEMENT[fmt] * s.numel), quantum)
                    for s in specs if s.numel >= TORCHAO_MIN and not s.numel % block), default=0)
    return rule


IMPLS = ("bitsandbytes", "torchao")
_TORCHAO_PATHS = {"cpu": ("fused",), "cuda": ("fused",)}


def _adamw8bit_state(o: Options, spec: ParamSpec, group: str) -> list[StateTensor]:
    return torchao_state("8bit", spec) if o["impl"] == "torchao" else bnb_state(o, spec)


def _adamw8bit_constructor(o: Options) -> dict:
    if o["impl"] == "torchao":
        if o["paged"]:
            raise UnknownOptimizer("adamw8bit:paged=true is bitsandbytes' PagedAdamW8bit: drop "
                                   "impl=torchao (torchao pages with its CPU offload instead)")
        return dict(lr=1e-3)
    return dict(lr=1e-3, is_paged=o["paged"])


#: bytes per parameter element torchao's compiled step holds beyond its state: peak RSS growth of
#: a compiled CPU step on 8 Mi- and 32 Mi-element fp32 and bf16 parameters (torch 2.14.1, torchao
#: 0.18.0; bench/bench_zoo_temporaries.py): 8-bit two fp32 copies (the dequantized moments),
#: 4-bit 6.5 (its 16-entry code search), FP8 only the two new per-block scales.
COMPILED_BYTES_PER_ELEMENT = {"8bit": 8.0, "4bit": 26.0, "fp8": 2 * 4 / 256}


def _adamw8bit_fused(o: Options, specs: Sequence[ParamSpec], quantum: int) -> int:
    return _compiled("8bit")(o, specs, quantum) if o["impl"] == "torchao" else 0

ADAMW8BIT = OptimizerInfo(
    id="adamw8bit", display_name="AdamW 8-bit",
    summary="8-bit AdamW: uint8 moments with fp32 block scales (bitsandbytes; torchao)",
    implementation="bitsandbytes.optim:AdamW8bit", requires=BNB,
    reproduces="bitsandbytes.optim.AdamW8bit, bitsandbytes 0.50.2", verified=VERIFIED_BY_TESTS,
    impls={"torchao": Implementation("torchao.optim:AdamW8bit", TORCHAO,
                                     "torchao.optim.AdamW8bit, torchao 0.18.0", _TORCHAO_PATHS)},
    options={
        "impl": Option("bitsandbytes", "choice", "which implementation", choices=IMPLS),
        "paged": Option(False, "bool", "bitsandbytes' paged states (CUDA unified memory for "
                        "parameters of 10^5+ elements)"),
    },
    state=_adamw8bit_state,
    temporaries={"for-loop": _bnb_loop, "fused": _adamw8bit_fused},
    paths={"cpu": ("for-loop",), "cuda": ("fused",)},
    probe_lr=1e-3, constructor=_adamw8bit_constructor,
)


def _torchao(fmt: str, cls: str, display: str, summary: str) -> OptimizerInfo:
    return OptimizerInfo(
        id=cls.lower(), display_name=display, summary=summary,
        implementation=f"torchao.optim:{cls}", requires=TORCHAO,
        reproduces=f"torchao.optim.{cls}, torchao 0.18.0", verified=VERIFIED_BY_TESTS,
        state=lambda o, spec, group: torchao_state(fmt, spec),
        temporaries={"fused": _compiled(fmt)},
        paths=_TORCHAO_PATHS, probe_lr=1e-3, constructor=lambda o: dict(lr=1e-3),
    )


ADAMW4BIT = _torchao("4bit", "AdamW4bit", "AdamW 4-bit",
                     "4-bit AdamW: two codes a byte, fp32 scale per 128 (torchao)")
ADAMWFP8 = _torchao("fp8", "AdamWFp8", "AdamW FP8",
                    "FP8 AdamW: e4m3 moments, fp32 scale per 256 (torchao)")
