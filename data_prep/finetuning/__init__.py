"""Fine-tuning a local Hugging Face text encoder as an utterance classifier: the library
behind ``python -m data_prep.finetune_text`` (see that command for the user's view).

The classifier is the encoder's sentence embedding (mean pooling over the attention mask,
L2-normalised: :func:`corect.data.text_model.embed_batch`, the very function the feature
writer uses) scaled by sqrt(dim), then one linear layer. Only the train split is fitted,
the epoch is chosen by dev weighted F1, the test split is never read. The saved directory
is a plain Hugging Face model (``model.safetensors``, tokenizer, ``config.json``), plus
``sentence_bert_config.json`` (its max length), the classifier head
(``classifier_head.safetensors``) and ``corect_finetune.json``, the record of how it was
made, which the feature writer reads (past context). It is written into a temporary
sibling directory and renamed into place, so an interrupted run never leaves a partial
model and never damages a previous one.

One module per part, in the order a run uses them:

- :mod:`~data_prep.finetuning.config`: the settings (:class:`FinetuneConfig`), checked;
- :mod:`~data_prep.finetuning.utterances`: a split's labelled utterances as model inputs,
  and the length-bucketed training batches;
- :mod:`~data_prep.finetuning.encoder`: the base model loaded, LoRA or frozen, and the
  embedding of many inputs;
- :mod:`~data_prep.finetuning.training`: the trainer (one epoch, dev predictions,
  snapshots of the best weights) and the epoch loop;
- :mod:`~data_prep.finetuning.saving`: the record of the run and the model directory;
- :mod:`~data_prep.finetuning.resume`: the resumable state saved as the run goes
  (``<out>.resume.pt``, removed with the model written) and ``--resume`` from it;
- :mod:`~data_prep.finetuning.run`: :func:`~data_prep.finetuning.run.finetune`, one run
  top to bottom.
"""
