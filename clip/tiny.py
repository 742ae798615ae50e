"""Small random CLIPs with the released files' layout, for tests and CPU smoke runs.

No weights can be downloaded where the tests run, so the tiny names
("tiny-ViT-B/16", "tiny-RN50", ...) stand in for OpenAI's: ``clip.load`` writes
``<cache>/tiny-ViT-B-16.pt`` once from a seeded initialisation and then loads it
through the ordinary state-dict path, so the real loader code is exercised.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Tuple, Union

import torch
from torch import Tensor, nn

from .model import CLIP, build_model, convert_weights

# Every OpenAI CLIP has a 12-layer text transformer; the tiny ones keep it, at a small width.
_TEXT: Dict[str, Any] = dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                             transformer_layers=12)

#: CLIP constructor arguments of each tiny configuration (text tower shared). Each keeps its
#: real model's depth (12 vision layers for ViT-B, RN50's stages (3, 4, 6, 3)) at a small width,
#: so per-layer prompts (MaPLe's PROMPT_DEPTH 9, deep VPT) and the original recipes run unchanged.
TINY_CONFIGS: Dict[str, Dict[str, Any]] = {
    "tiny-ViT-B/16": dict(embed_dim=64, image_resolution=224, vision_layers=12, vision_width=128,
                          vision_patch_size=16, **_TEXT),
    "tiny-ViT-B/32": dict(embed_dim=64, image_resolution=224, vision_layers=12, vision_width=128,
                          vision_patch_size=32, **_TEXT),
    "tiny-RN50": dict(embed_dim=64, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=16,
                      vision_patch_size=None, **_TEXT),
}


def tiny_models() -> List[str]:
    """Names of the tiny random CLIPs accepted wherever a CLIP name is."""
    return list(TINY_CONFIGS)


def tiny_file_name(name: str) -> str:
    """Cache file name of a tiny model, spelled like OpenAI's ("tiny-ViT-B/16" -> "tiny-ViT-B-16.pt")."""
    return name.replace("/", "-").replace("@", "-") + ".pt"


def tiny_state_dict(name: str, seed: int = 0) -> Dict[str, Tensor]:
    """Deterministic random state dict of a tiny CLIP, stored like a released file
    (fp16 weights, fp32 norms/embeddings, logit scale log(100)); the global RNG is untouched."""
    if name not in TINY_CONFIGS:
        raise KeyError(f"unknown tiny CLIP {name!r}; tiny models: {tiny_models()}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**TINY_CONFIGS[name])
    convert_weights(model)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def atomic_target(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` atomically.

    Readers (or a concurrent writer) never see a half-written checkpoint; the
    downloader in ``clip.loading`` uses it too.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _expected_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CLIP(**TINY_CONFIGS[name]).state_dict().items()}


@functools.lru_cache(maxsize=None)
def _matches_config_cached(path: str, name: str, mtime_ns: int, size: int) -> bool:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a plain state dict: a TorchScript archive or a broken file, left to the loader
        return True
    if not isinstance(stored, dict):
        return True
    expected = _expected_shapes(name)
    return stored.keys() == expected.keys() and all(tuple(stored[k].shape) == v for k, v in expected.items())


def _matches_config(path: str, name: str) -> bool:
    """Whether the file at ``path`` holds a state dict of ``name``'s current shapes (an older release
    wrote smaller tiny CLIPs under the same file name); checked once per file version and process."""
    info = os.stat(path)
    return _matches_config_cached(path, name, info.st_mtime_ns, info.st_size)


def ensure_tiny_file(name: str, root: str) -> str:
    """Path of ``<root>/<tiny file>``, writing it (atomically) from seed 0 if it is absent. A file
    of another shape (an older release's tiny CLIP) is renamed to ``<file>.stale`` and rewritten."""
    path = os.path.join(root, tiny_file_name(name))
    if os.path.isfile(path) and not _matches_config(path, name):
        os.replace(path, path + ".stale")
        print(f"Note: {path} held an older tiny CLIP layout; kept it as {path}.stale and wrote the current one")
    if not os.path.isfile(path):
        state_dict = tiny_state_dict(name)
        with atomic_target(path) as tmp:
            torch.save(state_dict, tmp)
    return path


class _ArchiveModule(nn.Module):
    """CLIP's parameters at OpenAI's top-level names plus the three metadata buffers
    OpenAI's TorchScript archives carry; the methods delegate to the wrapped CLIP."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(model.input_resolution))
        self.register_buffer("context_length", torch.tensor(model.context_length))
        self.register_buffer("vocab_size", torch.tensor(model.vocab_size))
        object.__setattr__(self, "clip_model", model)  # plain attribute: no second copy of the keys

    def forward(self, image: Tensor, text: Tensor) -> Any:
        return self.clip_model(image, text)

    def encode_image(self, image: Tensor) -> Tensor:
        return self.clip_model.encode_image(image)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.clip_model.encode_text(text)


def save_torchscript_archive(model_or_state_dict: Union[CLIP, Dict[str, Tensor]], path: str) -> None:
    """Write a traced TorchScript archive shaped like OpenAI's released files.

    ``torch.jit.load(path).state_dict()`` holds OpenAI's keys plus
    ``input_resolution``, ``context_length`` and ``vocab_size``; ``forward``,
    ``encode_image`` and ``encode_text`` are traced on the full 77-token
    context (no truncation), so they accept any batch size.
    """
    if isinstance(model_or_state_dict, CLIP):
        model = model_or_state_dict
    else:
        model = build_model(model_or_state_dict)
    resolution = model.input_resolution
    param = model.visual.conv1.weight
    image = torch.zeros(1, 3, resolution, resolution, dtype=param.dtype, device=param.device)
    text = torch.zeros(2, model.context_length, dtype=torch.long, device=param.device)
    text[:, 0] = model.vocab_size - 2
    text[:, 5] = model.vocab_size - 1
    truncate, training = model.truncate_text, model.training
    model.truncate_text = False
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*torch\.jit.*deprecated", FutureWarning)
            traced = torch.jit.trace_module(
                _ArchiveModule(model),
                {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)}, check_trace=False,
            )
    finally:
        model.truncate_text = truncate
        model.train(training)
    with atomic_target(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit.*deprecated", FutureWarning)
        torch.jit.save(traced, tmp)
