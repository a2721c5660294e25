"""Using a trained run on new dialogues: reading inputs the way the run was trained
(:mod:`~corect.inference.inputs`), the streaming recognizer of live dialogues and how its
cost stays bounded (:mod:`~corect.inference.recognizer`, the design note), and its
latency bench (:mod:`~corect.inference.latency`).
"""
