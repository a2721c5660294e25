"""Many runs at once: the plan runner and its logs (:mod:`~corect.experiments.runner`),
the Ray backend (:mod:`~corect.experiments.backends`) and search spaces
(:mod:`~corect.experiments.space`).
"""
