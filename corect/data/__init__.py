"""Data, one module each:

- :mod:`~corect.data.dataset`: a dataset in memory (``Dataset``, ``SplitData``) and the
  records converters write (``DialogueRecord``);
- :mod:`~corect.data.format`: the on-disk format, written and loaded with every field
  checked; :mod:`~corect.data.manifest`: its manifest;
- :mod:`~corect.data.batching`: padded batches of dialogues, the contract with the models;
- :mod:`~corect.data.synthetic`: the embedded synthetic dataset;
- :mod:`~corect.data.jsonl`: dialogues as JSON lines (converter, predict, stream);
- :mod:`~corect.data.text_encoder`: text features, cached (:mod:`~corect.data.text_model`:
  the model directory and the embedding); :mod:`~corect.data.vector_store`: the cache.
"""
