"""Training SAEs on stored activations: many SAEs per pass over the data, reproducible and resumable."""

from saev.training.config import TrainConfig
from saev.training.results import RunResult, results_table
from saev.training.trainer import train

__all__ = ["RunResult", "TrainConfig", "results_table", "train"]
