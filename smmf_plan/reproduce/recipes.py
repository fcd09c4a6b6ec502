"""One documented recipe per model the SMMF paper trains (Park & Lee, AAAI 2025).

Every recipe builds the model offline on the meta device (no weights, no downloads) and returns
its :class:`~smmf_plan.shapes.ParamSpec` list through
:func:`smmf_plan.sources.module.specs_from_module`, so tied weights count once and frozen weights
(LoRA base, Marian's sinusoidal tables) get no optimizer state.

The paper names some models only by family. Where its text is silent, the configuration is
inferred from the paper's **own Adam figure**: Adam keeps two fp32 moments, so its state is
``8·N`` bytes for ``N`` trainable parameters, which pins ``N`` to within the printed precision.
Each recipe's ``inferred`` field says what was inferred and from which figure; the report
repeats it. Architecture hyper-parameters below are the published configurations of the named
checkpoints (typed in here, not downloaded).

Two accountings of training memory appear (``Recipe.training``):

``"fp32"``
    plain PyTorch fp32 training on one device: weights (every parameter) + gradients (trainable
    parameters) + optimizer state.
``"megatron-mixed"``
    Megatron-LM mixed precision (Table 3, "low-precision weight parameter used in the Megatron-LM
    code"): fp16 weights (2·N) + fp16 gradients (2·N) + fp32 main weights (4·N) + fp32 main
    gradients (4·N) + fp32 optimizer state over the fp32 main weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

from ..shapes import ParamSpec
from ..sources.lora import apply_lora
from ..sources.module import specs_from_module

#: GLUE task → number of labels of the classification head.
GLUE_LABELS = {"QNLI": 2, "MNLI": 3, "QQP": 2, "STSB": 1, "MRPC": 2, "COLA": 2, "RTE": 2}

#: LoRA configuration inferred for LLaMA-7b (see :func:`llama7b_lora`).
LORA_RANK = 8
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class OpenDetail:
    """A model dimension the paper does not state: planned at ``nominal``; ``build(value)`` gives
    the recipe's specs at another value, and ``candidates`` are the values the report tries when a
    figure does not agree. Recipes that share ``name`` share the unknown (one value for all)."""

    name: str
    nominal: int
    build: Callable[[int], list[ParamSpec]] = field(repr=False, compare=False)
    candidates: tuple[int, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """How one paper model is rebuilt for planning."""

    key: str
    #: the architecture actually built (library, class, configuration).
    architecture: str
    #: why this architecture/configuration (paper text, checkpoint named by the paper ...).
    why: str
    build: Callable[[], list[ParamSpec]] = field(repr=False, compare=False)
    #: what the paper leaves unsaid and was inferred from its own figures (None: nothing).
    inferred: str | None = None
    #: "fp32" or "megatron-mixed": how weights and gradients are held (module docstring).
    training: str = "fp32"
    #: a dimension the paper leaves open, if any (the report searches it for unmatched figures).
    open_detail: OpenDetail | None = None


# --------------------------------------------------------------------------- builders
def _specs(module) -> list[ParamSpec]:
    return specs_from_module(module)


@lru_cache(maxsize=None)
def _timm(name: str, num_classes: int) -> tuple[ParamSpec, ...]:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return tuple(_specs(model))


@lru_cache(maxsize=None)
def _hf(cls_name: str, config_name: str, **overrides) -> tuple[ParamSpec, ...]:
    """A transformers model class built from one of the configurations in :data:`HF_CONFIGS`."""
    import torch
    import transformers

    cfg_cls, kwargs = HF_CONFIGS[config_name]
    config = getattr(transformers, cfg_cls)(**{**kwargs, **overrides})
    with torch.device("meta"):
        model = getattr(transformers, cls_name)(config)
    return tuple(_specs(model))


#: published configurations of the checkpoints the paper names (config class, kwargs).
HF_CONFIGS: dict[str, tuple[str, dict]] = {
    "bert-base-uncased": ("BertConfig", dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)),
    "bert-large-uncased": ("BertConfig", dict(
        vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)),
    "gpt2": ("GPT2Config", dict(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, pad_token_id=50256)),
    "gpt2-medium": ("GPT2Config", dict(
        vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16)),
    "t5-small": ("T5Config", dict(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
        feed_forward_proj="relu", tie_word_embeddings=True)),
    "t5-base": ("T5Config", dict(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        feed_forward_proj="relu", tie_word_embeddings=True)),
    "roberta-base": ("RobertaConfig", dict(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5)),
    "albert-base-v2": ("AlbertConfig", dict(
        vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
        type_vocab_size=2)),
    "opus-mt-en-ro": ("MarianConfig", dict(
        vocab_size=59543, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=59542,
        decoder_start_token_id=59542, scale_embedding=True)),
    "bart-base": ("BartConfig", dict(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
        decoder_ffn_dim=3072, max_position_embeddings=1024)),
    "mbart-large-50": ("MBartConfig", dict(
        vocab_size=250054, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True)),
    "llama-7b": ("LlamaConfig", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
        rms_norm_eps=1e-6, pad_token_id=0)),
}


# ------------------------------------------------------------------ hand-built architectures
@lru_cache(maxsize=None)
def yolov5(depth_multiple: float, width_multiple: float, num_classes: int = 80) -> tuple[ParamSpec, ...]:
    """YOLOv5 (Ultralytics, release v6.0 and later: 6×6 stem conv, SPPF) rebuilt from the layer
    table of its ``yolov5s.yaml``/``yolov5m.yaml`` (backbone + PANet head + 3-scale Detect, 3
    anchors per scale). Only parameter-holding layers are built (no forward): names follow
    Ultralytics' ``model.{i}.cv1.conv.weight`` scheme. nc=80 (COCO). YOLOv5s is
    ``(0.33, 0.50)``, YOLOv5m ``(0.67, 0.75)``; Ultralytics reports 7,235,389 and 21,190,557
    parameters for them, which these builds reproduce exactly (checked in the tests)."""
    import torch
    from torch import nn

    def width(c: int) -> int:
        return int(math.ceil(c * width_multiple / 8) * 8)

    def depth(n: int) -> int:
        return max(round(n * depth_multiple), 1) if n > 1 else n

    class Conv(nn.Module):
        def __init__(self, c1: int, c2: int, k: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, bias=False)
            self.bn = nn.BatchNorm2d(c2)

    class Bottleneck(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.cv1 = Conv(c, c, 1)
            self.cv2 = Conv(c, c, 3)

    class C3(nn.Module):
        def __init__(self, c1: int, c2: int, n: int) -> None:
            super().__init__()
            c_ = int(c2 * 0.5)
            self.cv1 = Conv(c1, c_, 1)
            self.cv2 = Conv(c1, c_, 1)
            self.cv3 = Conv(2 * c_, c2, 1)
            self.m = nn.Sequential(*(Bottleneck(c_) for _ in range(n)))

    class SPPF(nn.Module):
        def __init__(self, c1: int, c2: int) -> None:
            super().__init__()
            c_ = c1 // 2
            self.cv1 = Conv(c1, c_, 1)
            self.cv2 = Conv(c_ * 4, c2, 1)

    class Detect(nn.Module):
        def __init__(self, chs: list[int]) -> None:
            super().__init__()
            self.m = nn.ModuleList(nn.Conv2d(c, 3 * (num_classes + 5), 1) for c in chs)

    # (from, repeats, module, args) exactly as in yolov5{s,m}.yaml (v6.0+)
    table = [
        (-1, 1, "Conv", (64, 6)), (-1, 1, "Conv", (128, 3)), (-1, 3, "C3", (128,)),
        (-1, 1, "Conv", (256, 3)), (-1, 6, "C3", (256,)), (-1, 1, "Conv", (512, 3)),
        (-1, 9, "C3", (512,)), (-1, 1, "Conv", (1024, 3)), (-1, 3, "C3", (1024,)),
        (-1, 1, "SPPF", (1024,)),
        (-1, 1, "Conv", (512, 1)), (-1, 1, "Upsample", ()), ((-1, 6), 1, "Concat", ()),
        (-1, 3, "C3", (512,)), (-1, 1, "Conv", (256, 1)), (-1, 1, "Upsample", ()),
        ((-1, 4), 1, "Concat", ()), (-1, 3, "C3", (256,)), (-1, 1, "Conv", (256, 3)),
        ((-1, 14), 1, "Concat", ()), (-1, 3, "C3", (512,)), (-1, 1, "Conv", (512, 3)),
        ((-1, 10), 1, "Concat", ()), (-1, 3, "C3", (1024,)),
        ((17, 20, 23), 1, "Detect", ()),
    ]
    layers, ch = [], [3]
    for f, n, kind, args in table:
        c1 = ch[f] if isinstance(f, int) else None
        if kind == "Conv":
            c2 = width(args[0])
            layers.append(Conv(c1, c2, args[1]))
        elif kind == "C3":
            c2 = width(args[0])
            layers.append(C3(c1, c2, depth(n)))
        elif kind == "SPPF":
            c2 = width(args[0])
            layers.append(SPPF(c1, c2))
        elif kind == "Concat":
            c2 = sum(ch[-1] if x == -1 else ch[x + 1] for x in f)
            layers.append(nn.Identity())
        elif kind == "Upsample":
            c2 = c1
            layers.append(nn.Identity())
        else:  # Detect
            c2 = 0
            layers.append(Detect([ch[x + 1] for x in f]))
        ch.append(c2)
    with torch.device("meta"):
        model = nn.Module()
        model.model = nn.Sequential(*layers)
    return tuple(_specs(model))


@lru_cache(maxsize=None)
def transformer_wmt(d_model: int, heads: int, d_ff: int, vocab: int = 32768,
                    layers: int = 6) -> tuple[ParamSpec, ...]:
    """Vaswani et al.'s encoder-decoder Transformer: ``torch.nn.Transformer`` (6+6 layers, final
    layer norms) with a source embedding, a target embedding and a bias-free output projection,
    all three **untied**. Positional encodings are sinusoidal (no parameters)."""
    import torch
    from torch import nn

    with torch.device("meta"):
        model = nn.Module()
        model.src_embed = nn.Embedding(vocab, d_model)
        model.tgt_embed = nn.Embedding(vocab, d_model)
        model.transformer = nn.Transformer(d_model, heads, layers, layers, d_ff, batch_first=True)
        model.generator = nn.Linear(d_model, vocab, bias=False)
    return tuple(_specs(model))


#: the three vocab × d matrices of :func:`transformer_wmt` (everything else is vocabulary-free).
WMT_VOCAB_PARAMS = ("src_embed.weight", "tgt_embed.weight", "generator.weight")
#: the WMT32k vocabulary: nominally 2**15 subwords; searched upwards in steps of 32.
WMT_VOCAB = 32768
WMT_VOCAB_CANDIDATES = tuple(range(WMT_VOCAB, WMT_VOCAB + 4096 + 1, 32))


def _wmt_vocab(d_model: int, heads: int, d_ff: int) -> OpenDetail:
    """The WMT32k vocabulary of :func:`transformer_wmt` as an open detail: another vocabulary
    changes exactly the three vocab × d matrices."""
    def build(vocab: int) -> list[ParamSpec]:
        return [replace(s, shape=(vocab, d_model)) if s.name in WMT_VOCAB_PARAMS else s
                for s in transformer_wmt(d_model, heads, d_ff)]

    return OpenDetail("WMT32k vocabulary", WMT_VOCAB, build, WMT_VOCAB_CANDIDATES)


def llama7b_lora(num_labels: int) -> tuple[ParamSpec, ...]:
    """LLaMA-7b for sequence classification with LoRA rank 8 on every linear projection of every
    decoder layer (q/k/v/o/gate/up/down); the classification head ``score`` stays trainable, as
    PEFT's sequence-classification task makes it."""
    return _llama7b_lora(num_labels, LORA_RANK, LORA_TARGETS)


@lru_cache(maxsize=None)
def _llama7b_lora(num_labels: int, rank: int, targets: tuple[str, ...]) -> tuple[ParamSpec, ...]:
    base = list(_hf("LlamaForSequenceClassification", "llama-7b", num_labels=num_labels))
    specs = apply_lora(base, rank, targets)
    # PEFT's SEQ_CLS task trains the head (``modules_to_save``): keep it trainable.
    return tuple(
        replace(s, trainable=True) if s.name.startswith("score.") else s
        for s in specs
    )


# --------------------------------------------------------------------------- the recipes
def _glue_note(task: str) -> str:
    n = GLUE_LABELS[task]
    tasks = [t for t in ("QNLI", "MNLI", "QQP", "STSB", "MRPC") if GLUE_LABELS[t] == n]
    return f"{n}-label head ({', '.join(tasks)})"


def _recipes() -> dict[str, Recipe]:
    r: dict[str, Recipe] = {}

    def add(rec: Recipe) -> None:
        r[rec.key] = rec

    for ds, nc in (("ImageNet", 1000), ("CIFAR100", 100)):
        tag = "in1k" if nc == 1000 else "c100"
        add(Recipe(
            f"resnet50-{tag}", f"timm resnet50, num_classes={nc}",
            "ResNet-50 (He et al. 2016). timm's resnet50 has the same parameter shapes as "
            "torchvision's resnet50 (the official SMMF example trains torchvision "
            f"resnet50(num_classes={nc})).",
            lambda nc=nc: list(_timm("resnet50", nc)),
            inferred=None if nc == 1000 else
            "CIFAR variant not stated: the ImageNet architecture with a 100-way head (as the official "
            "example, CIFAR resized to 224) is assumed; a CIFAR stem (3×3 conv) would be smaller still, "
            "while the paper's figures are 1.4-2.4 % larger than this build.",
        ))
        add(Recipe(
            f"mobilenetv2-{tag}", f"timm mobilenetv2_100, num_classes={nc}",
            "MobileNetV2 width 1.0 (the paper's 'MobileNet (V2)'); same shapes as torchvision "
            "mobilenet_v2.",
            lambda nc=nc: list(_timm("mobilenetv2_100", nc)),
            inferred=None if nc == 1000 else "CIFAR variant not stated: ImageNet architecture, 100-way head.",
        ))
    add(Recipe(
        "yolov5s", "YOLOv5s v6.0+ (depth 0.33, width 0.50), 80 classes, hand-built",
        "YOLOv5s (Ultralytics 2021) on COCO. Not in timm/transformers: rebuilt from its model yaml.",
        lambda: list(yolov5(0.33, 0.50)),
        inferred="YOLOv5 release not stated: v6.0+ (the release current when the paper was written) "
                 "is assumed.",
    ))
    add(Recipe(
        "yolov5m", "YOLOv5m v6.0+ (depth 0.67, width 0.75), 80 classes, hand-built",
        "YOLOv5m (Ultralytics 2021) on COCO. Not in timm/transformers: rebuilt from its model yaml.",
        lambda: list(yolov5(0.67, 0.75)),
        inferred="YOLOv5 release not stated: v6.0+ is assumed.",
    ))
    add(Recipe(
        "transformer-base", "nn.Transformer d=512, 8 heads, d_ff=2048, 6+6 layers; 3 untied 32768×512 embeddings",
        "Transformer-base (Vaswani et al. 2017) trained from scratch on tensor2tensor's WMT32k (En-De).",
        lambda: list(transformer_wmt(512, 8, 2048)),
        open_detail=_wmt_vocab(512, 8, 2048),
        inferred="Embedding tying and vocabulary not stated. Vocabulary 32k (the dataset's name). The "
                 "Adam figures (0.7 / 2.1 GiB) fit only three untied vocab×d matrices (source, target, "
                 "softmax): base 94.4M params → 0.70 GiB; tying all three gives 61M → 0.45 GiB and tying "
                 "source/target only 78M → 0.58 GiB, both outside the printed 0.7.",
    ))
    add(Recipe(
        "transformer-big", "nn.Transformer d=1024, 16 heads, d_ff=4096, 6+6 layers; 3 untied 32768×1024 embeddings",
        "Transformer-big (Vaswani et al. 2017) trained from scratch on WMT32k.",
        lambda: list(transformer_wmt(1024, 16, 4096)),
        inferred="As Transformer-base: 32k vocabulary, untied embeddings (fits Adam 2.1 GiB; fully tied "
                 "would be 1.6 GiB). Table 2's Adafactor/SM3/CAME and SMMF figures need a larger "
                 "vocabulary, which Transformer-base's figures exclude (the report searches it).",
        open_detail=_wmt_vocab(1024, 16, 4096),
    ))
    add(Recipe(
        "bert-large-pretrain", "transformers BertForPreTraining, bert-large-uncased config (24 layers, d=1024)",
        "BERT pre-trained with Megatron-LM on BookCorpus & Wikipedia (Table 3).",
        lambda: list(_hf("BertForPreTraining", "bert-large-uncased")),
        inferred="Model size not stated. Adam 2.5 GiB = 8·N pins N ≈ 329-342M: BERT-large (336M, "
                 "Megatron's 'BERT 345M'); BERT-base (110M) would be 0.8 GiB.",
        training="megatron-mixed",
    ))
    add(Recipe(
        "gpt2-medium-pretrain", "transformers GPT2LMHeadModel, gpt2-medium config (24 layers, d=1024)",
        "GPT-2 pre-trained with Megatron-LM (Table 3).",
        lambda: list(_hf("GPT2LMHeadModel", "gpt2-medium")),
        inferred="Model size not stated. Adam 2.6 GiB pins N ≈ 342-356M: GPT-2 medium (355M, "
                 "Megatron's 'GPT-2 345M'); GPT-2 small (124M) would be 0.9 GiB.",
        training="megatron-mixed",
    ))
    add(Recipe(
        "t5-base-pretrain", "transformers T5ForConditionalGeneration, t5-base config (12+12 layers, d=768)",
        "T5 pre-trained with Megatron-LM (Table 3).",
        lambda: list(_hf("T5ForConditionalGeneration", "t5-base")),
        inferred="Model size not stated. Adam 1.7 GiB pins N ≈ 221-235M: T5-base (223M, Megatron's "
                 "T5 example size); T5-small would be 0.45 GiB, T5-large 5.5 GiB.",
        training="megatron-mixed",
    ))
    for task, n in sorted(GLUE_LABELS.items()):
        if task in ("COLA", "RTE"):
            continue
        add(Recipe(
            f"bert-base-glue-{n}", f"transformers BertForSequenceClassification, bert-base-uncased, {n} labels",
            "HF bert-base-uncased fine-tuned (Tables 19-23 name the checkpoint); " + _glue_note(task) + ".",
            lambda n=n: list(_hf("BertForSequenceClassification", "bert-base-uncased", num_labels=n)),
        ))
        add(Recipe(
            f"gpt2-glue-{n}", f"transformers GPT2ForSequenceClassification, gpt2, {n} labels",
            "HF gpt2 fine-tuned (Tables 19-23 name the checkpoint); " + _glue_note(task) + ".",
            lambda n=n: list(_hf("GPT2ForSequenceClassification", "gpt2", num_labels=n)),
        ))
    add(Recipe(
        "t5-small", "transformers T5ForConditionalGeneration, t5-small config",
        "HF t5-small (named in Tables 19-25); GLUE, SQuADv2, translation and summarisation are all "
        "text-to-text, so no task head.",
        lambda: list(_hf("T5ForConditionalGeneration", "t5-small")),
    ))
    for n in sorted({GLUE_LABELS["COLA"], GLUE_LABELS["MNLI"], GLUE_LABELS["STSB"]}):
        add(Recipe(
            f"llama-7b-lora-{n}",
            f"transformers LlamaForSequenceClassification, LLaMA-7b config, {n} labels, LoRA r={LORA_RANK} "
            f"on {'/'.join(t.removesuffix('_proj') for t in LORA_TARGETS)}",
            "LLaMA-7b (Touvron et al. 2023a) fine-tuned with LoRA (Hu et al. 2021); base weights frozen "
            "(fp32: the end-to-end 24.9 GiB fits 4 B per base weight), adapters and head trained.",
            lambda n=n: list(llama7b_lora(n)),
            inferred="LoRA rank and targets not stated. Adam 153 MiB = 8·N pins N ≈ 20.0M trainable "
                     "parameters: rank 8 on all seven projections gives 19.99M (q/v only would need "
                     "rank 38; q/k/v/o rank 19). The Adafactor/SM3 (86) and CAME (96, Table 7) figures "
                     "confirm the rank: with A (8×4096) and B (4096×8) their factored vectors cost N/8, "
                     "so Adafactor ≈ 4.5·N B = 86 MiB and CAME ≈ 5·N B = 95 MiB.",
        ))
    for name, cls, cfg, why in (
        ("roberta-base-qa", "RobertaForQuestionAnswering", "roberta-base", "HF FacebookAI/roberta-base (named in Table 8)"),
        ("albert-base-v2-qa", "AlbertForQuestionAnswering", "albert-base-v2", "HF albert/albert-base-v2 (named in Table 8)"),
        ("bert-base-qa", "BertForQuestionAnswering", "bert-base-uncased", "HF bert-base-uncased (Table 24)"),
        ("gpt2-qa", "GPT2ForQuestionAnswering", "gpt2", "HF gpt2 (Table 24)"),
    ):
        add(Recipe(name, f"transformers {cls}, {cfg} config", why + ", span-extraction head, SQuAD.",
                   lambda cls=cls, cfg=cfg: list(_hf(cls, cfg))))
    add(Recipe(
        "marian-en-ro", "transformers MarianMTModel, Helsinki-NLP/opus-mt-en-ro config (vocab 59543, d=512, 6+6)",
        "MarianMT fine-tuned on WMT16 En-Ro (Table 10); sinusoidal position tables are frozen parameters.",
        lambda: list(_hf("MarianMTModel", "opus-mt-en-ro")),
        inferred="Checkpoint not named: opus-mt-en-ro assumed (Adam 569 MiB pins N ≈ 74.6M; it has 74.62M "
                 "trainable).",
    ))
    add(Recipe(
        "bart-base", "transformers BartForConditionalGeneration, bart-base config",
        "BART-base (Lewis et al. 2019) fine-tuned for summarisation (Table 12).",
        lambda: list(_hf("BartForConditionalGeneration", "bart-base")),
    ))
    add(Recipe(
        "mbart-large", "transformers MBartForConditionalGeneration, mbart-large-50 config (vocab 250054, d=1024, 12+12)",
        "mBART (Liu et al. 2020) fine-tuned for Italian summarisation (Table 13).",
        lambda: list(_hf("MBartForConditionalGeneration", "mbart-large-50")),
        inferred="Size and checkpoint not named. Adam 4661 MiB pins N ≈ 611M: mBART-large (no smaller "
                 "mBART was published). Of its two checkpoints, mbart-large-50 (vocab 250054, 610.88M) "
                 "gives Adam 4660.6 → 4661 MiB and SMMF 77.6 MiB (paper 77.8/77.5), mbart-large-cc25 "
                 "(vocab 250027, 610.85M) 4660.4 → 4660 MiB and SMMF 79.3 MiB; -50 is used.",
    ))
    return r


RECIPES: dict[str, Recipe] = _recipes()


def recipe_key(model: str, dataset: str) -> str:
    """The recipe for a (model, dataset) pair as the paper's tables name them."""
    m, d = model.strip(), dataset.strip()
    if m in ("ResNet-50", "MobileNetV2"):
        base = "resnet50" if m == "ResNet-50" else "mobilenetv2"
        return f"{base}-{'in1k' if d == 'ImageNet' else 'c100'}"
    if m in ("YOLOv5s", "YOLOv5m"):
        return m.lower()
    if m.startswith("Transformer-"):
        return m.lower()
    if d.startswith("BookCorpus"):
        return {"BERT": "bert-large-pretrain", "GPT-2": "gpt2-medium-pretrain", "T5": "t5-base-pretrain"}[m]
    if d in GLUE_LABELS:
        n = GLUE_LABELS[d]
        return {"BERT": f"bert-base-glue-{n}", "GPT-2": f"gpt2-glue-{n}", "T5-small": "t5-small",
                "LLaMA-7b": f"llama-7b-lora-{n}"}[m]
    if d == "SQuAD":
        return {"RoBERTa-base": "roberta-base-qa", "ALBERT-base-v2": "albert-base-v2-qa",
                "BERT": "bert-base-qa", "GPT-2": "gpt2-qa"}[m]
    if m == "T5-small":
        return "t5-small"
    if m.startswith("MarianMT"):
        return "marian-en-ro"
    if m == "BART-base":
        return "bart-base"
    if m == "mBART":
        return "mbart-large"
    raise KeyError(f"no recipe for model {model!r} on {dataset!r}")


@lru_cache(maxsize=None)
def build(key: str) -> tuple[ParamSpec, ...]:
    """The recipe's parameter specs (built once per process)."""
    return tuple(RECIPES[key].build())
