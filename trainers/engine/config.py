"""Configuration: Dassl's defaults, per-trainer keys, and yacs merging with clear errors.

Assembly order is CoOp's: defaults <- every registered trainer's own keys <- dataset
YAML <- trainer YAML <- command-line flags <- trailing ``KEY VALUE`` options.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN
from yacs.config import _check_and_coerce_cfg_value_type

from clip.errors import InvalidInputError

__all__ = ["CN", "ConfigError", "get_cfg_default", "merge_from_file", "merge_from_list",
           "merge_dict", "all_keys", "register_alternative_type"]


class ConfigError(InvalidInputError):
    """A config file or option that does not fit the known keys or their types."""


def get_cfg_default() -> CN:
    """Dassl's defaults (the keys the CoOp family reads), plus this project's additions."""
    _C = CN()
    _C.VERSION = 1
    _C.OUTPUT_DIR = "./output"
    _C.RESUME = ""
    _C.SEED = -1
    _C.USE_CUDA = True
    _C.VERBOSE = True

    _C.INPUT = CN()
    _C.INPUT.SIZE = (224, 224)
    _C.INPUT.INTERPOLATION = "bilinear"
    _C.INPUT.TRANSFORMS = ()
    _C.INPUT.NO_TRANSFORM = False
    _C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    _C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    _C.INPUT.CROP_PADDING = 4
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)
    _C.INPUT.CUTOUT_N = 1
    _C.INPUT.CUTOUT_LEN = 16
    _C.INPUT.GN_MEAN = 0.0
    _C.INPUT.GN_STD = 0.15
    _C.INPUT.RANDAUGMENT_N = 2
    _C.INPUT.RANDAUGMENT_M = 10
    _C.INPUT.COLORJITTER_B = 0.4
    _C.INPUT.COLORJITTER_C = 0.4
    _C.INPUT.COLORJITTER_S = 0.4
    _C.INPUT.COLORJITTER_H = 0.1
    _C.INPUT.RGS_P = 0.2
    _C.INPUT.GB_P = 0.5
    _C.INPUT.GB_K = 21

    _C.DATASET = CN()
    _C.DATASET.ROOT = ""
    _C.DATASET.NAME = ""
    _C.DATASET.SOURCE_DOMAINS = ()
    _C.DATASET.TARGET_DOMAINS = ()
    _C.DATASET.NUM_LABELED = -1
    _C.DATASET.NUM_SHOTS = -1
    _C.DATASET.VAL_PERCENT = 0.1
    _C.DATASET.STL10_FOLD = -1
    _C.DATASET.CIFAR_C_TYPE = ""
    _C.DATASET.CIFAR_C_LEVEL = 1
    _C.DATASET.ALL_AS_UNLABELED = False
    _C.DATASET.SUBSAMPLE_CLASSES = "all"  # CoOp's extend_cfg: all, base or new
    _C.DATASET.SUBSAMPLE_TASKS = "all"  # SoftCPT's: all, task<i>, base (first ceil(T/2) tasks) or new

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.K_TRANSFORMS = 1
    _C.DATALOADER.RETURN_IMG0 = False
    # SoftCPT's: image paths of its few-shot pickles starting with OLD_DATA_PATH are read under NEW_DATA_PATH
    _C.DATALOADER.OLD_DATA_PATH = ""
    _C.DATALOADER.NEW_DATA_PATH = ""
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    _C.DATALOADER.TRAIN_X.N_DOMAIN = 0
    _C.DATALOADER.TRAIN_X.N_INS = 16
    _C.DATALOADER.TRAIN_U = CN()
    _C.DATALOADER.TRAIN_U.SAME_AS_X = True
    _C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
    _C.DATALOADER.TRAIN_U.N_DOMAIN = 0
    _C.DATALOADER.TRAIN_U.N_INS = 16
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    _C.DATALOADER.TEST.BATCH_SIZE = 32

    _C.MODEL = CN()
    _C.MODEL.INIT_WEIGHTS = ""
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = ""
    _C.MODEL.BACKBONE.PRETRAINED = True
    _C.MODEL.BACKBONE.PATH = ""  # a local CLIP file used instead of the name's cache file
    # Cut text sequences after the last end-of-text token (same features, ~3x cheaper); False: 77 tokens.
    _C.MODEL.BACKBONE.TRUNCATE_TEXT = True
    # Encode the class-independent leading prompt tokens once (exact; False: every class in full).
    _C.MODEL.BACKBONE.SHARED_PREFIX = True
    # Recompute each text block in backward instead of storing its activations (memory for ~1 forward).
    _C.MODEL.BACKBONE.TEXT_CHECKPOINTING = False
    _C.MODEL.HEAD = CN()
    _C.MODEL.HEAD.NAME = ""
    _C.MODEL.HEAD.HIDDEN_LAYERS = ()
    _C.MODEL.HEAD.ACTIVATION = "relu"
    _C.MODEL.HEAD.BN = True
    _C.MODEL.HEAD.DROPOUT = 0.0

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "adam"
    _C.OPTIM.LR = 0.0003
    _C.OPTIM.WEIGHT_DECAY = 5e-4
    _C.OPTIM.MOMENTUM = 0.9
    _C.OPTIM.SGD_DAMPNING = 0
    _C.OPTIM.SGD_NESTEROV = False
    _C.OPTIM.RMSPROP_ALPHA = 0.99
    _C.OPTIM.ADAM_BETA1 = 0.9
    _C.OPTIM.ADAM_BETA2 = 0.999
    _C.OPTIM.STAGED_LR = False
    _C.OPTIM.NEW_LAYERS = ()
    _C.OPTIM.BASE_LR_MULT = 0.1
    _C.OPTIM.LR_SCHEDULER = "single_step"
    _C.OPTIM.STEPSIZE = (-1,)
    _C.OPTIM.GAMMA = 0.1
    _C.OPTIM.MAX_EPOCH = 10
    _C.OPTIM.WARMUP_EPOCH = -1
    _C.OPTIM.WARMUP_TYPE = "linear"
    _C.OPTIM.WARMUP_CONS_LR = 1e-5
    _C.OPTIM.WARMUP_MIN_LR = 1e-5
    _C.OPTIM.WARMUP_RECOUNT = True

    _C.TRAIN = CN()
    _C.TRAIN.CHECKPOINT_FREQ = 0
    _C.TRAIN.PRINT_FREQ = 10
    _C.TRAIN.COUNT_ITER = "train_x"

    _C.TEST = CN()
    _C.TEST.EVALUATOR = "Classification"
    _C.TEST.PER_CLASS_RESULT = False
    _C.TEST.COMPUTE_CMAT = False
    _C.TEST.NO_TEST = False
    _C.TEST.SPLIT = "test"
    _C.TEST.FINAL_MODEL = "last_step"
    _C.TEST.SAVE_PREDICTIONS = False  # write predictions.csv (one row per test image)
    _C.TEST.PER_TASK_RESULT = False  # SoftCPT's per-task lines ("* task: i (name)\ttotal: n\tmetric: x%")

    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""
    return _C


# Keys whose YAMLs in the wild use a second type (e.g. KgCoOp sets TRAINER.COOP.CTX_INIT: True):
# key -> every accepted type, the declared default's type first.
_ACCEPTED_TYPES: Dict[str, Tuple[type, ...]] = {}


def register_alternative_type(full_key: str, default_type: type, *alternatives: type) -> None:
    """Accept values of ``alternatives`` for ``full_key`` besides its ``default_type``.

    A later value may switch back, e.g. ``CTX_INIT: True`` in a YAML, then ``CTX_INIT ""``.
    """
    _ACCEPTED_TYPES[full_key] = (default_type,) + alternatives


def all_keys(cfg: CN, prefix: str = "") -> List[str]:
    """Every leaf key of ``cfg`` as a dotted path."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if isinstance(v, CN):
            keys.extend(all_keys(v, full + "."))
        else:
            keys.append(full)
    return keys


def _unknown_key_error(cfg: CN, full_key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(full_key, all_keys(cfg), n=1, cutoff=0.5)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    return ConfigError(f'Unknown config key "{full_key}" (from {source}).{hint}')


def _coerce(value: Any, default: Any, full_key: str, source: str) -> Any:
    value = CN._decode_cfg_value(value)
    accepted = _ACCEPTED_TYPES.get(full_key, ())
    if accepted and isinstance(value, accepted):
        return value
    try:
        return _check_and_coerce_cfg_value_type(value, default, full_key.split(".")[-1], full_key)
    except ValueError as exc:
        raise ConfigError(
            f'Config key "{full_key}" (from {source}) expects {type(default).__name__} '
            f"like its default {default!r}, got {type(value).__name__} {value!r}") from exc


def merge_dict(cfg: CN, data: Dict[str, Any], source: str, unknown: List[str] = None) -> None:
    """Merge a nested dict into ``cfg``, with yacs' literal decoding and type rules.

    Unknown keys raise ``ConfigError`` naming the closest known key, unless a list is
    given in ``unknown``: then they are collected there and skipped.
    """
    def merge(node: CN, part: Dict[str, Any], prefix: str) -> None:
        for k, v in part.items():
            full = f"{prefix}{k}"
            if k not in node:
                if unknown is None:
                    raise _unknown_key_error(cfg, full, source)
                unknown.append(full)
            elif isinstance(node[k], CN):
                if not isinstance(v, dict):
                    raise ConfigError(f'Config key "{full}" (from {source}) is a section, got {v!r}')
                merge(node[k], v, full + ".")
            else:
                node[k] = _coerce(v, node[k], full, source)

    merge(cfg, data, "")


def merge_from_file(cfg: CN, path: str, unknown: List[str] = None) -> None:
    """Merge a YAML file; errors name the file."""
    try:
        with open(path, "r") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, got {type(data).__name__}")
    merge_dict(cfg, data, path, unknown=unknown)


def merge_from_list(cfg: CN, opts: Sequence[str], source: str = "command line") -> None:
    """Merge trailing ``KEY VALUE`` pairs (dotted keys), as yacs' merge_from_list."""
    if len(opts) % 2:
        raise ConfigError(f"Options from the {source} must be KEY VALUE pairs; got an odd count: {list(opts)}")
    for full, value in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = full.split(".")
        for i, part in enumerate(parts):
            if part not in node:
                raise _unknown_key_error(cfg, full, source)
            if i < len(parts) - 1:
                node = node[part]
                if not isinstance(node, CN):
                    raise _unknown_key_error(cfg, full, source)
        if isinstance(node[parts[-1]], CN):
            raise ConfigError(f'"{full}" (from {source}) is a section, not a key')
        node[parts[-1]] = _coerce(value, node[parts[-1]], full, source)
