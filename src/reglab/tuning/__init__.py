"""Tuning honestly: a search judged by seed-mean validation metrics (``objective.py``), Optuna's
search loop with resumable storage and the final comparison on fresh seeds (``search.py``,
``final.py``) and its report (``report.py``)."""

from .objective import Objective, seed_objective
from .search import TuneError, tune

__all__ = ["tune", "seed_objective", "Objective", "TuneError"]
