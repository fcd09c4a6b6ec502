"""The task vocabulary: one name per kind of training batch, used everywhere — the sources
(``ModelSpec.meta["task"]``), the traced step's inputs (:mod:`smmf_plan.trace.inputs`), the probe,
``--task`` and every JSON document. Torch-free: the sources and the tracer both import it."""

from __future__ import annotations

import difflib

from .errors import PlanError

#: images ``(B, C, H, W)`` + integer class ids: ``x`` and cross entropy for timm, ``pixel_values``
#: + ``labels`` and the model's own loss for transformers (ViT, Swin, ConvNeXt ...).
IMAGE_CLASSIFICATION = "image-classification"
#: ``input_ids`` + ``labels`` = the inputs, both ``(B, seq_len)``; the model's own loss.
CAUSAL_LM = "causal-lm"
#: as causal-lm (every position is a label).
MASKED_LM = "masked-lm"
#: ``input_ids`` + ``labels`` of the input length; the model derives ``decoder_input_ids``.
SEQ2SEQ_LM = "seq2seq-lm"
#: ``input_ids`` + ``labels (B,)``; the model's own loss.
SEQUENCE_CLASSIFICATION = "sequence-classification"
#: ``input_ids`` + ``labels (B, seq_len)`` of class ids; the model's own loss.
TOKEN_CLASSIFICATION = "token-classification"
#: ``input_ids`` + ``start_positions`` and ``end_positions (B,)`` (extractive QA); the model's loss.
QUESTION_ANSWERING = "question-answering"
#: speech encoder-decoder (Whisper): ``input_features (B, mel bins, frames)`` — the frames the
#: encoder requires, 2 × its source positions — + ``labels (B, seq_len)``; the model derives the
#: decoder inputs and computes its loss.
SPEECH_SEQ2SEQ = "speech-seq2seq"
#: image-text contrastive (CLIP, SigLIP): ``input_ids (B, seq_len)`` + ``pixel_values (B, C, H, W)``
#: with ``return_loss=True``; the model's contrastive loss.
CONTRASTIVE = "contrastive"
#: the main input only (a bare encoder/decoder: ``input_ids``, or ``pixel_values`` for a bare
#: vision model); the loss is the mean of the first output.
BASE = "base"
TASKS = (IMAGE_CLASSIFICATION, CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, SEQUENCE_CLASSIFICATION,
         TOKEN_CLASSIFICATION, QUESTION_ANSWERING, SPEECH_SEQ2SEQ, CONTRASTIVE, BASE)
#: text tasks whose labels are the input tokens.
TOKEN_LABELS = (CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM)
#: transformers main inputs a batch can be built for (``PreTrainedModel.main_input_name``).
MAIN_INPUTS = ("input_ids", "pixel_values", "input_features")


def check_task(text: str | None) -> str | None:
    """``text`` as a task name (``--task``; ``None`` stays ``None``); :class:`PlanError` naming
    the closest tasks otherwise."""
    if text is None:
        return None
    key = str(text).strip().lower()
    if key in TASKS:
        return key
    close = difflib.get_close_matches(key, TASKS, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise PlanError(f"--task {text!r} is not a task: {hint}use one of {', '.join(TASKS)}")
