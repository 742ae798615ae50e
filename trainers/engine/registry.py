"""The trainer registry and the per-trainer config hooks.

Each trainer module declares its own ``TRAINER.<NAME>.*`` keys with ``@config_hook`` next
to its code; ``extend_cfg`` applies every hook, so no central function needs editing.
"""
from __future__ import annotations

from typing import Callable, List

from datasets.registry import Registry

TRAINER_REGISTRY = Registry("trainer")

_CONFIG_HOOKS: List[Callable] = []


def config_hook(fn: Callable) -> Callable:
    """Register ``fn(cfg)`` that adds a trainer's keys with their defaults."""
    _CONFIG_HOOKS.append(fn)
    return fn


def extend_cfg(cfg) -> None:
    for hook in _CONFIG_HOOKS:
        hook(cfg)


def build_trainer(cfg):
    name = cfg.TRAINER.NAME
    trainer_cls = TRAINER_REGISTRY.get(name)
    if cfg.VERBOSE:
        print(f"Loading trainer: {name}")
    return trainer_cls(cfg)
