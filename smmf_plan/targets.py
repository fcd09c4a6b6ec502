"""Which parameters low-rank and orthogonalizing optimizers (GaLore, APOLLO, COAP, Muon) treat:
the one rule, stated in every output that plans such an optimizer, read by their registry
entries. The facts it reads (``ParamSpec.linear`` / ``head``) are found by
:mod:`smmf_plan.sources.roles`; ``--target GLOB`` sets ``ParamSpec.target`` and replaces the rule.
Torch-free and import-light (the CLI's help text imports the registry).
"""

from __future__ import annotations

from .shapes import ParamSpec

#: last module-name components that name an output head in checkpoints without a config.
HEAD_NAMES = frozenset({"lm_head", "head", "classifier", "fc", "score", "output", "embed_out",
                        "qa_outputs"})
#: words in a 2-D weight's name that mark it as not a linear layer's (embeddings, norms).
NOT_LINEAR_WORDS = ("embed", "wte", "wpe", "norm", "ln_", "position", "token_type", "shared",
                    "pos_emb", "tok_emb")

TARGET_RULE = ("GaLore, APOLLO, COAP and Muon treat the 2-D weights of Linear layers (nn.Linear, "
               "transformers' Conv1D) except the output head (timm's get_classifier(), "
               "transformers' get_output_embeddings(); in a checkpoint without a config: 2-D "
               "*.weight tensors not named like embeddings or norms, head = modules named "
               + "/".join(sorted(HEAD_NAMES)) + "); every other parameter gets AdamW. "
               "--target GLOB replaces the rule")


def is_target(spec: ParamSpec) -> bool:
    """Whether a low-rank / orthogonalizing optimizer treats ``spec`` (``--target`` globs decide
    where given, else :data:`TARGET_RULE`)."""
    if spec.target is not None:
        return spec.target
    return spec.linear and not spec.head and len(spec.shape) == 2


