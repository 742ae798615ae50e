"""Checkpoint files in Dassl's layout, written atomically and read without running pickled code.

Layout (what CoOp's scripts and users expect): ``<output>/<model name>/model.pth.tar-<epoch>``,
optionally ``model-best.pth.tar``, and a one-line ``checkpoint`` file naming the latest save.

Reading: PyTorch >= 2.6 refuses every checkpoint that the original Dassl wrote with a warm-up
schedule (the scheduler state pickles a whole PyTorch scheduler and its optimizer), so plain
``torch.load`` breaks ``--eval-only`` and resume. Loading the file with ``weights_only=False``
would run whatever the pickle asks for. Instead, files that the safe loader refuses are read by
an unpickler that only builds tensors, numbers and containers and turns every other object into
a plain dict of its stored attributes; nothing in the file is ever called.
"""
from __future__ import annotations

import builtins
import codecs
import collections
import copyreg
import os
import pickle
import random
import re
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Set

import numpy as np
import torch
import torch.nn as nn

from clip.errors import MissingInputError, UnusableFileError, UserInputError
from datasets.io import atomic_save, atomic_write_text

__all__ = ["BEST_NAME", "POINTER_NAME", "CheckpointMismatchError", "save_checkpoint", "load_checkpoint",
           "resume_from_checkpoint", "load_state_dict_checked",
           "checkpoint_path", "find_last_checkpoint"]

BEST_NAME = "model-best.pth.tar"
POINTER_NAME = "checkpoint"
_EPOCH_PREFIX = "model.pth.tar-"
_TOP_LEVEL_KEYS = ("state_dict", "epoch", "optimizer", "scheduler", "val_result")


class CheckpointMismatchError(UserInputError, RuntimeError):
    """A checkpoint whose tensors do not fit the module it is loaded into."""


# ----- names and pointer file -------------------------------------------------------------------

def checkpoint_path(directory: str, name: str, epoch: Optional[int] = None) -> str:
    """``<directory>/<name>/model-best.pth.tar``, or ``model.pth.tar-<epoch>`` when an epoch is given."""
    file_name = BEST_NAME if epoch is None else f"{_EPOCH_PREFIX}{epoch}"
    return os.path.join(directory, name, file_name)


def _latest_in_folder(folder: str) -> Optional[str]:
    """The file the pointer names; without a pointer, the highest epoch file, else the best file."""
    pointer = os.path.join(folder, POINTER_NAME)
    if os.path.isfile(pointer):
        with open(pointer, "r") as f:
            lines = [line.strip() for line in f if line.strip()]
        if not lines:
            raise UnusableFileError(f'The checkpoint pointer "{pointer}" is empty; expected the name of a checkpoint file')
        return os.path.join(folder, lines[0])
    if not os.path.isdir(folder):
        return None
    epochs = [int(m.group(1)) for m in (re.fullmatch(re.escape(_EPOCH_PREFIX) + r"(\d+)", f)
                                        for f in os.listdir(folder)) if m]
    if epochs:
        return os.path.join(folder, f"{_EPOCH_PREFIX}{max(epochs)}")
    best = os.path.join(folder, BEST_NAME)
    return best if os.path.isfile(best) else None


def find_last_checkpoint(directory: str, name: str) -> Optional[str]:
    """The path recorded in ``<directory>/<name>/checkpoint`` (None when the folder holds no checkpoint).

    A folder copied without its pointer file still resumes from its highest ``model.pth.tar-<N>``.
    """
    return _latest_in_folder(os.path.join(directory, name))


# ----- saving ----------------------------------------------------------------------------------------

def latest_checkpoint(directory: str, name: str) -> str:
    """The highest-epoch ``model.pth.tar-<N>`` in ``<directory>/<name>``."""
    folder = os.path.join(directory, name)
    epochs = [int(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
              for m in [re.fullmatch(r"model\.pth\.tar-(\d+)", f)] if m]
    if not epochs:
        raise MissingInputError(f'--load-epoch -1 asks for the latest epoch, but "{folder}" holds no '
                                "model.pth.tar-<epoch> file")
    return os.path.join(folder, f"model.pth.tar-{max(epochs)}")


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Drop DataParallel's ``module.`` so the keys fit the bare module."""
    if not any(k.startswith("module.") for k in state_dict):
        return state_dict
    stripped = collections.OrderedDict((k[len("module."):] if k.startswith("module.") else k, v)
                                       for k, v in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        stripped._metadata = collections.OrderedDict(  # type: ignore[attr-defined]
            (k[len("module."):] if k.startswith("module.") else ("" if k == "module" else k), v)
            for k, v in metadata.items())
    return stripped


_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _check_weights_only_safe(obj: Any, where: str, path: str) -> None:
    """Refuse to write objects that ``torch.load(weights_only=True)`` could not read back.

    New checkpoints must stay loadable by the safe loader (e.g. a warm-up scheduler stores its
    successor's ``state_dict()``, not the successor object).
    """
    if type(obj) in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, collections.OrderedDict, collections.Counter):
        for key, value in obj.items():
            _check_weights_only_safe(key, f"{where}[{key!r}] (key)", path)
            _check_weights_only_safe(value, f"{where}[{key!r}]", path)
        return
    if type(obj) in (list, tuple, set, frozenset, torch.Size):
        for i, value in enumerate(obj):
            _check_weights_only_safe(value, f"{where}[{i}]", path)
        return
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    raise TypeError(f'Cannot save checkpoint "{path}": {where} is a {kind} object, which '
                    f"torch.load(weights_only=True) cannot read; store plain tensors, numbers and "
                    f"containers (e.g. the object's state_dict()) instead")


def save_checkpoint(state: Dict[str, Any], save_dir: str, is_best: bool = False, model_name: str = "") -> str:
    """Write ``state`` as Dassl does and point ``<save_dir>/checkpoint`` at it; returns the file path.

    ``state`` holds ``state_dict`` and ``epoch`` (1-based); ``optimizer``, ``scheduler`` and
    ``val_result`` default to None. The file is ``model.pth.tar-<epoch>`` unless ``model_name``
    is given; ``is_best`` also writes ``model-best.pth.tar``.
    """
    for key in ("state_dict", "epoch"):
        if key not in state:
            raise KeyError(f'A checkpoint needs the key "{key}"; got keys {sorted(state)}')
    state = dict(state)
    state["state_dict"] = _strip_module_prefix(state["state_dict"])
    for key in _TOP_LEVEL_KEYS:
        state.setdefault(key, None)
    file_name = model_name or f"{_EPOCH_PREFIX}{state['epoch']}"
    path = os.path.join(save_dir, file_name)
    _check_weights_only_safe(state, "checkpoint", path)

    def write(f) -> None:
        torch.save(state, f)

    atomic_save(path, write)
    print(f"Checkpoint saved to {path}")
    atomic_write_text(os.path.join(save_dir, POINTER_NAME), file_name + "\n")
    if is_best and file_name != BEST_NAME:
        best = os.path.join(save_dir, BEST_NAME)
        atomic_save(best, write)
        print(f'Best checkpoint saved to "{best}"')
    return path


# ----- restricted unpickling ---------------------------------------------------------------------

class _StandIn:
    """Inert replacement for an object (or callable) whose type is not on the allow-list.

    Calling it, constructing it, or restoring its state only records the arguments; the
    record becomes a plain dict after loading (``_to_plain``).
    """

    _vl_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StandIn":
        obj = object.__new__(cls)
        obj._vl_args, obj._vl_kwargs = args, kwargs
        obj._vl_state, obj._vl_items, obj._vl_list = None, [], []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._vl_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._vl_items.append((key, value))

    def append(self, value: Any) -> None:
        self._vl_list.append(value)

    def extend(self, values: Any) -> None:
        self._vl_list.extend(values)


_STAND_INS: Dict[str, type] = {}


def _stand_in_class(qualified_name: str) -> type:
    if qualified_name not in _STAND_INS:
        _STAND_INS[qualified_name] = type("StandIn", (_StandIn,), {"_vl_name": qualified_name})
    return _STAND_INS[qualified_name]


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 object creation; ``cls`` and ``base`` already passed the allow-list."""
    if isinstance(cls, type) and issubclass(cls, _StandIn):
        return cls(state) if state is not None else cls()
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


def _safe_rebuild_from_type(func: Callable, new_type: Any, args: tuple, state: Any) -> Any:
    """Tensor subclasses outside the allow-list come back as plain tensors."""
    if new_type in (torch.Tensor, nn.Parameter):
        return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)  # type: ignore[attr-defined]
    return func(*args)


def _safe_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(text, "latin1")``."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8"):
        raise pickle.UnpicklingError(f"Refusing to decode pickled bytes with codec {encoding!r}")
    return codecs.encode(obj, encoding, errors)


_SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
    "bytearray", "slice", "range", "object")}
_SAFE_BUILTINS.update({"unicode": str, "long": int, "xrange": range})  # Python 2 names
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol-2 pickles use Python 2 names
_SAFE_COLLECTIONS = {name: getattr(collections, name) for name in ("OrderedDict", "defaultdict", "Counter", "deque")}
_TORCH_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy",
                     "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_meta_tensor_no_storage")


def _allowed_global(module: str, name: str) -> Any:
    """The object for an allow-listed global, or None."""
    if module in ("builtins", "__builtin__"):
        return _SAFE_BUILTINS.get(name)
    if module == "collections":
        return _SAFE_COLLECTIONS.get(name)
    if module in ("copyreg", "copy_reg") and name == "_reconstructor":
        return _safe_reconstructor
    if module == "_codecs" and name == "encode":
        return _safe_encode
    if module == "torch":
        if name in ("Size", "Tensor", "device"):
            return getattr(torch, name)
        value = vars(torch).get(name)
        return value if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)) else None
    if module == "torch._utils" and name in _TORCH_REBUILDERS:
        return getattr(torch._utils, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _safe_rebuild_from_type
    if module == "torch.nn.parameter" and name == "Parameter":
        return nn.Parameter
    if module == "numpy" and name in ("dtype", "ndarray"):
        import numpy
        return getattr(numpy, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("scalar", "_reconstruct"):
        import numpy
        multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
        return getattr(multiarray, name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; every other global becomes a ``_StandIn`` class."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_global(module, name)
        if allowed is not None:
            return allowed
        return _stand_in_class(f"{_PY2_MODULES.get(module, module)}.{name}")


def _restricted_pickle_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# ``torch.load`` accepts any object with ``Unpickler`` and ``load`` as its pickle module.
_RESTRICTED_PICKLE = types.SimpleNamespace(__name__="vlprompt_restricted_pickle", Unpickler=_RestrictedUnpickler,
                                           load=_restricted_pickle_load)


def _to_plain(obj: Any, names: Set[str], memo: Dict[int, Any]) -> Any:
    """Replace stand-ins by dicts (``__class__`` plus their stored attributes), recursively."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _StandIn):
        names.add(obj._vl_name)
        out: Dict[str, Any] = {"__class__": obj._vl_name}
        memo[id(obj)] = out
        if obj._vl_args:
            out["__args__"] = [_to_plain(a, names, memo) for a in obj._vl_args]
        if obj._vl_kwargs:
            out["__kwargs__"] = {k: _to_plain(v, names, memo) for k, v in obj._vl_kwargs.items()}
        state = obj._vl_state
        if (isinstance(state, tuple) and len(state) == 2
                and all(s is None or isinstance(s, dict) for s in state)):  # (__dict__, __slots__)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            for key, value in state.items():
                out[key] = _to_plain(value, names, memo)
        elif state is not None:
            out["__state__"] = _to_plain(state, names, memo)
        if obj._vl_items:
            out["__items__"] = [[_to_plain(k, names, memo), _to_plain(v, names, memo)] for k, v in obj._vl_items]
        if obj._vl_list:
            out["__list__"] = [_to_plain(v, names, memo) for v in obj._vl_list]
        return out
    if isinstance(obj, dict):
        plain = dict() if isinstance(obj, collections.defaultdict) else type(obj)()
        memo[id(obj)] = plain
        for key, value in obj.items():
            plain[key] = _to_plain(value, names, memo)
        if getattr(obj, "_metadata", None) is not None:
            plain._metadata = obj._metadata  # type: ignore[attr-defined]
        return plain
    if type(obj) is list:
        items: List[Any] = []
        memo[id(obj)] = items
        items.extend(_to_plain(v, names, memo) for v in obj)
        return items
    if type(obj) is tuple:
        return tuple(_to_plain(v, names, memo) for v in obj)
    return obj


# ----- loading ---------------------------------------------------------------------------------------

def load_checkpoint(path: str, map_location: Any = None) -> Dict[str, Any]:
    """Read a checkpoint written by this project or by the original Dassl/CoOp code.

    Safe loading first; a file it refuses (pickled schedulers, optimizers, ``Datum``s) is read
    with the restricted unpickler and its objects come back as plain dicts with a ``__class__``
    entry. ``map_location`` defaults to "cpu" when CUDA is unavailable.
    """
    if not os.path.isfile(path):
        raise MissingInputError(f'No checkpoint file at "{path}"')
    if map_location is None and not torch.cuda.is_available():
        map_location = "cpu"
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            pass  # objects beyond tensors and containers (or not a pickle at all): try the restricted reader
        except UnicodeDecodeError:
            pass  # a Python 2 file: the restricted reader retries with latin-1
        names: Set[str] = set()
        for encoding in ("utf-8", "latin1"):
            try:
                raw = torch.load(path, map_location=map_location, pickle_module=_RESTRICTED_PICKLE,
                                 weights_only=False, encoding=encoding)
                break
            except UnicodeDecodeError:
                if encoding == "latin1":
                    raise
        checkpoint = _to_plain(raw, names, {})
    except Exception as exc:
        raise UnusableFileError(f'Cannot read checkpoint "{path}" (truncated, corrupt or not a PyTorch file?): '
                           f"{type(exc).__name__}: {exc}") from exc
    if names:
        print(f'Note: "{path}" stores pickled Python objects ({", ".join(sorted(names))}); '
              f"they were read as plain dicts without running their code")
    return checkpoint


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Any], strict: bool, source: str) -> Any:
    """``module.load_state_dict`` with an error that lists every mismatched key, both shapes and the file.

    Returns what ``load_state_dict`` returns (the missing and unexpected keys when not strict).
    """
    own = module.state_dict()
    problems = []
    for key, value in state_dict.items():
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape:
            problems.append(f"  {key}: checkpoint {list(value.shape)} vs model {list(own[key].shape)}")
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if strict and missing:
        problems.append("  missing in the checkpoint: " + ", ".join(missing))
    if strict and unexpected:
        problems.append("  not in the model: " + ", ".join(unexpected))
    if problems:
        raise CheckpointMismatchError(f'Checkpoint "{source}" does not fit {type(module).__name__}:\n'
                                      + "\n".join(problems))
    return module.load_state_dict(state_dict, strict=strict)


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer: Any = None, scheduler: Any = None) -> Dict[str, Any]:
    """Restore model (strictly), optimizer, scheduler and RNGs from the latest file in ``fdir``;
    returns the checkpoint (``["epoch"]`` is the epoch to continue from)."""
    path = _latest_in_folder(fdir)
    if path is None:
        raise MissingInputError(f'No checkpoint to resume from in "{fdir}" (expected a "{POINTER_NAME}" file '
                                f"or model.pth.tar-<epoch> files)")
    print(f'Loading checkpoint from "{path}"')
    checkpoint = load_checkpoint(path)
    load_state_dict_checked(model, checkpoint["state_dict"], strict=True, source=path)
    print("Loaded model weights")
    for label, target, key in (("optimizer", optimizer, "optimizer"), ("scheduler", scheduler, "scheduler")):
        if target is not None and checkpoint.get(key) is not None:
            try:
                target.load_state_dict(checkpoint[key])
            except Exception as exc:
                raise UnusableFileError(f'Cannot restore the {label} from "{path}": {type(exc).__name__}: {exc}') from exc
            print(f"Loaded {label}")
    if checkpoint.get("rng_state") is not None:
        restore_rng_state(checkpoint["rng_state"])
        print("Restored the random number generators")
    print(f"Previous epoch: {checkpoint['epoch']}")
    return checkpoint


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch generator states as weights-only-safe values.

    Stored in every checkpoint (an extra key, ignored by Dassl-based loaders) so that a
    resumed run shuffles and augments exactly like an uninterrupted one.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
