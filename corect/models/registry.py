"""The one registry of model names, read by config validation (``corect.config``), the
factory (:func:`corect.models.build.build_model`) and the benchmark's variants.

- :data:`FUSION_NAMES`: the fusion baselines (``model.name``, or ``model.fusion`` of
  ``context``); :data:`MODEL_NAMES`: every ``model.name``.
- :data:`VARIANTS`: benchmark model name -> config overrides. Every model name is a
  variant as is; CORECT's ablations and the plain references are config switches.
"""

from __future__ import annotations

FUSION_NAMES = ("early", "late", "gated", "tensor", "lowrank", "xattn", "attnpool", "moe")
MODEL_NAMES = ("corect", *FUSION_NAMES, "context")

VARIANTS: dict[str, tuple[str, ...]] = {
    **{name: (f"model.name={name}",) for name in MODEL_NAMES},
    "corect-no-rtgcn": ("model.name=corect", "model.use_rtgcn=false"),
    "corect-no-pcm": ("model.name=corect", "model.use_pcm=false"),
    "corect-no-speaker": ("model.name=corect", "model.use_speaker=false"),
    "corect-context-free": (
        "model.name=corect",
        "model.use_rtgcn=false",
        "model.use_pcm=false",
        "model.encoders={t: mlp, a: mlp, v: mlp}",
    ),
    **{
        f"context-{fusion}": ("model.name=context", f"model.fusion={fusion}")
        for fusion in FUSION_NAMES
    },
    # Plain references on the same (standardised) features: what a reader compares
    # against to see what context and the graph add. No speaker embedding, MLP encoders.
    "ref-mlp": (  # a 2-layer MLP per utterance, then the classifier head
        "model.name=early",
        "model.use_speaker=false",
        "model.encoders={t: mlp, a: mlp, v: mlp}",
    ),
    "ref-gru": (  # the same MLP, then a GRU over the dialogue (forward-only when causal)
        "model.name=context",
        "model.fusion=early",
        "model.use_speaker=false",
        "model.encoders={t: mlp, a: mlp, v: mlp}",
    ),
}

DEFAULT_VARIANTS = (
    "corect",
    "corect-no-rtgcn",
    "corect-no-pcm",
    "corect-no-speaker",
    "corect-context-free",
    *FUSION_NAMES,
    "context",
    "ref-mlp",
    "ref-gru",
)

# Plain references, marked in benchmark figures: CORECT without its context parts, and
# the recurrent context model over any fusion.
REFERENCES = ("corect-context-free", "context", "ref-mlp", "ref-gru")


def is_reference(variant: str) -> bool:
    """Whether benchmark variant `variant` is a plain reference (:data:`REFERENCES`)."""
    return variant in REFERENCES or variant.startswith("context-")
