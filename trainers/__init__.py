"""Importing this package registers every trainer (and its config keys)."""
from trainers import coop, zsclip  # noqa: F401  (registration side effect)
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer

__all__ = ["TRAINER_REGISTRY", "build_trainer"]
