"""Training and scoring: the training loop (:mod:`~corect.engine.training`), the train
step, checkpoints and scoring of a run (:mod:`~corect.engine.runs`), and the per-part
diagnostics of a trained CORECT (:mod:`~corect.engine.diagnostics`).
"""
