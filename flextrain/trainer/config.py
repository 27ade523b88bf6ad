"""The trainer's configuration: the environment contract of flextrain.contract.env
(`TrainerEnv`), which the operator's pods and `flextrain run` set. Its table is in
docs/aggregator.md ("Running a trainer")."""

from __future__ import annotations

from flextrain.contract.env import EnvError as ConfigError
from flextrain.contract.env import TrainerEnv as TrainerConfig
from flextrain.contract.env import partition_label

__all__ = ["ConfigError", "TrainerConfig", "partition_label"]
