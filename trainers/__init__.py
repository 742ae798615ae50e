"""Importing this package registers every trainer (and its config keys)."""
from trainers import coop, zsclip  # noqa: F401  (registration side effect)
from trainers import cocoop  # noqa: F401
from trainers import kgcoop  # noqa: F401
from trainers import maple  # noqa: F401
from trainers import adapt  # noqa: F401
from trainers import softcpt  # noqa: F401  (MTCoOp = SoftCPT, MTCoOpHard)
from trainers import mvlpt, vpt  # noqa: F401
from trainers import dept  # noqa: F401  (ExtrasLinearProbe<Trainer> / DePT<Trainer> for every trainer)
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer

__all__ = ["TRAINER_REGISTRY", "build_trainer"]
