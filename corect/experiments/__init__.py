"""Many runs at once, one module each:

- :mod:`~corect.experiments.runner`: the plan runner (configs, seeds, reuse of finished
  runs, logs, progress, mean ± std over seeds) behind every multi-run command;
- :mod:`~corect.experiments.backends`: where the runs train (Ray);
- :mod:`~corect.experiments.benchmark`: models x seeds x modes, their test scores
  tabulated (``python -m corect.benchmark``);
- :mod:`~corect.experiments.compare`: offline vs causal (``python -m corect.compare_modes``);
- :mod:`~corect.experiments.space`: search spaces of config values;
- :mod:`~corect.experiments.trials`: the search on Ray Tune, its trials and their files;
- :mod:`~corect.experiments.tuning`: the search, then the best config over seeds
  (``python -m corect.tune``);
- :mod:`~corect.experiments.speed`: graph, training and inference timings
  (``python -m corect.speed``).
"""
