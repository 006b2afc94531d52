"""Training: ``fit``, ``History``, callbacks."""

from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from .engine import TrainingDiverged
from .fit import fit
from .history import History

__all__ = ["fit", "History", "Callback", "EarlyStopping", "ModelCheckpoint", "CSVLogger", "TrainingDiverged"]
