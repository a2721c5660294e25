"""Using a trained run on new dialogues: reading inputs the way the run was trained
(:mod:`~corect.inference.inputs`) and the streaming recognizer of live dialogues
(:mod:`~corect.inference.recognizer`).
"""
