"""Models: every model takes a :class:`corect.data.batching.Batch` and returns logits
``[N, classes]`` for the batch's N real utterances, dialogue after dialogue.

One file per model family, bottom to top:

- :mod:`~corect.models.graph`: the relational temporal graph (nodes, edges, relations);
- :mod:`~corect.models.attention`: masked (causal, windowed) attention blocks and stacks;
- :mod:`~corect.models.encoders`: input standardisation, per-modality encoders, speaker
  embeddings, the classifier head (shared by every model);
- :mod:`~corect.models.rtgcn`, :mod:`~corect.models.pcm`: CORECT's two parts;
- :mod:`~corect.models.corect`: CORECT itself;
- :mod:`~corect.models.fusion`, :mod:`~corect.models.baselines`: the fusion baselines and
  the recurrent context model;
- :mod:`~corect.models.caches`: streaming, the one ``step(x, cache, *, extras)`` shape
  every causal layer has, the caches several layers share (``Window``, the
  recurrent states) and ``StreamingModel``, the step skeleton of every model. Each
  layer's own cache is a dataclass beside that layer, where its ``step`` reads it
  (``AttentionCache`` in attention, ``GraphCache`` in rtgcn, ``PCMCache`` in pcm,
  ``CORECTCache`` in corect);
- :mod:`~corect.models.registry`: model names; :mod:`~corect.models.build`: the factory.

This file imports nothing, so ``corect.config`` can read the registry without a cycle.
"""
