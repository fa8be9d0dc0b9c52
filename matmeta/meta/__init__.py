"""The MAML engine: functional adaptation (``MAML``) and the outer loop (``MetaTrainer``)."""

from matmeta.meta.maml import MAML
from matmeta.meta.trainer import EpisodeSource, MetaTrainer, TrainerConfig, TrainResult

__all__ = ["MAML", "EpisodeSource", "MetaTrainer", "TrainResult", "TrainerConfig"]
