"""Training and scoring, one module each:

- :mod:`~corect.engine.training`: the training loop and its step (``train``, ``fit``,
  ``train_epoch``, ``train_step``, ``score_dev``, ``finish_run``), read top to bottom;
- :mod:`~corect.engine.reports`: what a run logs while it trains (log lines, TensorBoard);
- :mod:`~corect.engine.checkpoints`: a run on disk: its folder, data and model, checkpoint
  and status (``run.json``);
- :mod:`~corect.engine.state`: the full training state written every epoch, from which a
  stopped run resumes;
- :mod:`~corect.engine.scoring`: predictions on a split and a trained run scored again;
- :mod:`~corect.engine.losses`: class weights for the loss;
- :mod:`~corect.engine.objectives`, :mod:`~corect.engine.distillation`: the terms of
  ``train.loss`` and ``train.distill`` (contrastive, prototypes, a teacher's targets);
- :mod:`~corect.engine.diagnostics`: what each part of a trained CORECT does.
"""
