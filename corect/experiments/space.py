"""Search spaces for :mod:`corect.tune`: config keys and their distributions, read from
YAML and checked against a config before anything trains.

A space file holds one mapping, ``space:``, of dotted config keys to one distribution
each::

    space:
      train.lr: {loguniform: [1.0e-4, 1.0e-3]}
      model.dropout: {uniform: [0.2, 0.6]}
      model.hidden_size: {choice: [100, 200]}
      model.wp: {randint: [4, 16]}      # 4 .. 15 (high excluded, as in Ray Tune)
      train.class_weights: {choice: [false, true]}

Every key must exist in the config, and every choice and both ends of every range must
make a valid config (:func:`load_space`). A trial's values become ordinary ``--set``
overrides (:func:`overrides_of`). Ray Tune is imported only to build the samplers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from corect.common.files import read_yaml
from corect.config import Config, ConfigError, load_config

KINDS = {
    "choice": "a list of values",
    "uniform": "[low, high]",
    "loguniform": "[low, high], low > 0",
    "randint": "[low, high], integers, high excluded",
}


@dataclass(frozen=True)
class Param:
    """One searched config key (dotted) and its distribution."""

    key: str
    kind: str
    args: list[Any]

    @classmethod
    def parse(cls, key: str, spec: Any) -> Param:
        """``{kind: args}`` as a Param; a bad one fails naming the key."""
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
            kinds = "; ".join(f"{{{k}: {v}}}" for k, v in KINDS.items())
            raise ConfigError(f"space: {key}: give one of {kinds}; got {spec!r}")
        ((kind, args),) = spec.items()
        if kind in ("uniform", "loguniform") and isinstance(args, list):
            args = [as_number(a) for a in args]
        number = (int, float) if kind != "randint" else int
        ok = isinstance(args, list) and len(args) > 0
        if kind != "choice":
            ok = ok and len(args) == 2 and all(isinstance(a, number) for a in args)
            ok = ok and args[0] < args[1] and (kind != "loguniform" or args[0] > 0)
        if not ok:
            raise ConfigError(f"space: {key}: {kind} needs {KINDS[kind]}; got {args!r}")
        return cls(key, kind, args)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        low, high = self.args
        if self.kind == "randint":
            return isinstance(value, int) and low <= value < high
        return isinstance(value, (int, float)) and low <= value <= high

    def extremes(self) -> list[Any]:
        """Values that must all make valid configs: every choice, both ends."""
        return [self.args[0], self.args[1] - 1] if self.kind == "randint" else list(self.args)

    def sampler(self) -> Any:
        """The Ray Tune distribution."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(self.args)
        return getattr(tune, self.kind)(*self.args)  # uniform, loguniform, randint


def as_number(value: Any) -> Any:
    """A float for a numeric string (YAML 1.1 reads 1e-4, without a dot, as text)."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def plain(value: Any) -> Any:
    """A Python value for a NumPy scalar (what Tune samples), else the value."""
    return value.item() if hasattr(value, "item") else value


def overrides_of(values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides (values written as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(plain(value))}" for key, value in values.items()]


def config_value(config: Config, key: str) -> Any:
    """The value of dotted `key` in `config` (KeyError or TypeError when there is none)."""
    return reduce(lambda node, part: node[part], key.split("."), config.to_dict())


def load_space(path: str | Path, config_path: str | None, overrides: Sequence[str]) -> list[Param]:
    """The parameters of a space file, checked against the config: every key exists and
    every choice and bound makes a valid config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"space file {path} does not exist")
    data = read_yaml(path, ConfigError, "; give a YAML space file")
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict) or not data["space"]:
        raise ConfigError(f"{path}: expected a mapping `space:` of config keys to distributions")
    params = [Param.parse(key, spec) for key, spec in data["space"].items()]
    base = load_config(config_path, list(overrides))
    for param in params:
        try:
            config_value(base, param.key)
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: {param.key} is not a config key") from None
        for value in param.extremes():
            try:
                load_config(config_path, [*overrides, *overrides_of({param.key: value})])
            except ConfigError as err:
                raise ConfigError(f"{path}: {param.key}={value!r}: {err}") from None
    return params
