"""``clip.load``: model names -> cached files (SHA-256 checked), TorchScript or state dict -> CLIP.

Behaves like OpenAI's ``clip.load`` with three project additions: the cache
directory can be moved with ``VLPROMPT_CLIP_CACHE``; a failed download says
where to put the file by hand (training machines are often offline); tiny
random CLIPs (``clip.tiny``) are accepted by name.

``jit=True`` returns the TorchScript archive itself. No graph constants are
patched: archives written by ``clip.tiny.save_torchscript_archive`` follow
``.float()`` and the device they are loaded on, whereas OpenAI's own archives
bake fp16 and CUDA constants into their graphs, so on CPU use them with the
default ``jit=False``.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
from tqdm import tqdm

from . import tiny
from .errors import UnusableFileError
from .model import CLIP, build_model

__all__ = ["available_models", "load", "load_state_dict", "cache_dir", "CLIP_MEAN", "CLIP_STD"]

_URL = "https://openaipublic.azureedge.net/clip/models/{sha256}/{file}"  # the folder name is the SHA-256
_MODELS: Dict[str, str] = {name: _URL.format(sha256=sha, file=file) for name, sha, file in [
    ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    ("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    ("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    ("RN50x16", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    ("RN50x64", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    ("ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    ("ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    ("ViT-L/14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    ("ViT-L/14@336px", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
]}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CACHE_ENV = "VLPROMPT_CLIP_CACHE"
_CHUNK = 1 << 20


def available_models() -> List[str]:
    """Names of OpenAI's released CLIP models (tiny test models: ``clip.tiny_models()``)."""
    return list(_MODELS)


def cache_dir(download_root: Optional[str] = None) -> str:
    """Where checkpoints are kept: ``download_root``, else $VLPROMPT_CLIP_CACHE, else ~/.cache/clip."""
    return os.path.expanduser(download_root or os.environ.get(CACHE_ENV) or "~/.cache/clip")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, root: str, model_name: Optional[str] = None) -> str:
    """Return ``root/<basename(url)>``, downloading it unless a copy with the URL's SHA-256 is there.

    The download goes to a temporary file that is renamed into place only after
    its checksum matched, so an interrupted run never leaves a bad cache entry.
    """
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, os.path.basename(url))
    expected = url.split("/")[-2]
    label = model_name or os.path.basename(url)

    if os.path.exists(target):
        if not os.path.isfile(target):
            raise UnusableFileError(f"{target} exists and is not a regular file")
        if _sha256(target) == expected:
            return target
        warnings.warn(f"{target} exists, but its SHA256 checksum does not match {expected}; re-downloading")

    with tiny.atomic_target(target) as tmp:
        try:
            with urllib.request.urlopen(url) as source, open(tmp, "wb") as output:
                size = source.headers.get("Content-Length")
                with tqdm(total=int(size) if size else None, unit="iB", unit_scale=True, unit_divisor=1024,
                          desc=os.path.basename(url)) as bar:
                    for chunk in iter(lambda: source.read(_CHUNK), b""):
                        output.write(chunk)
                        bar.update(len(chunk))
        except OSError as err:  # urllib.error.URLError is an OSError
            raise UnusableFileError(
                f"could not download CLIP model {label!r} ({err}). If this machine is offline, fetch {url} "
                f"elsewhere and put it at {target} (expected SHA256 {expected})") from err
        if _sha256(tmp) != expected:
            raise UnusableFileError(f"downloaded {url}, but its SHA256 checksum does not match {expected}")
    return target


def _convert_image_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _transform(n_px: int) -> Compose:
    """CLIP's evaluation preprocessing for ``n_px`` input resolution."""
    return Compose([
        Resize(n_px, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(n_px),
        _convert_image_to_rgb,
        ToTensor(),
        Normalize(CLIP_MEAN, CLIP_STD),
    ])


def _resolve(name: str, download_root: Optional[str]) -> str:
    if name in _MODELS:
        return _download(_MODELS[name], cache_dir(download_root), model_name=name)
    if name in tiny.TINY_CONFIGS:
        return tiny.ensure_tiny_file(name, cache_dir(download_root))
    if os.path.isfile(name):
        return name
    raise UnusableFileError(f"Model {name} not found; available models = {available_models()}, "
                       f"tiny test models = {tiny.tiny_models()}, or give the path of a checkpoint file")


def _unwrap_state_dict(obj: Any, path: str) -> Dict[str, Tensor]:
    """Accept a bare state dict or one nested under "state_dict" / "model"."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return obj
    raise UnusableFileError(f"{path} holds a {type(obj).__name__}, not a CLIP state dict "
                       "(a mapping of parameter names to tensors, optionally under 'state_dict' or 'model')")


def _read_checkpoint(path: str, device: Union[str, torch.device], jit: bool) -> Tuple[Any, bool]:
    """(TorchScript module, True) or (state dict, False) read from ``path``."""
    with open(path, "rb") as f:
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but the released files are archives
                warnings.filterwarnings("ignore", r".*torch\.jit\.load.*deprecated", FutureWarning)
                return torch.jit.load(f, map_location=device if jit else "cpu").eval(), True
        except RuntimeError:
            f.seek(0)
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # any reader failure means the file is unusable; say which file
            raise UnusableFileError(
                f"{path} is neither a TorchScript archive nor a state dict readable by torch.load "
                f"({type(err).__name__}: {err}); the file may be truncated or corrupt, delete it and "
                "download it again") from err
    return _unwrap_state_dict(obj, path), False


def load_state_dict(name: str, download_root: Optional[str] = None) -> Dict[str, Tensor]:
    """CPU state dict (OpenAI layout) of a CLIP name or checkpoint path, for ``build_model``.

    The way CoOp's ``load_clip_to_cpu`` reads CLIP: resolve and verify the file
    like ``load``, take the archive's state dict (metadata keys included; they
    are dropped by ``build_model``) or the plain state dict.
    """
    checkpoint, is_archive = _read_checkpoint(_resolve(name, download_root), "cpu", jit=False)
    return checkpoint.state_dict() if is_archive else checkpoint


def load(name: str, device: Union[str, torch.device] = "cuda" if torch.cuda.is_available() else "cpu",
         jit: bool = False, download_root: Optional[str] = None,
         ) -> Tuple[Union[CLIP, torch.jit.ScriptModule], Callable[[Image.Image], Tensor]]:
    """Load a CLIP by name (OpenAI's or a tiny test model) or checkpoint path.

    Returns (model, preprocess). The default non-JIT model is rebuilt from the
    state dict with fp16 weights, moved to ``device`` and cast to fp32 on CPU.
    ``jit=True`` returns the TorchScript archive (state-dict files fall back to
    the non-JIT model with a warning).
    """
    on_cpu = torch.device(device).type == "cpu"
    if jit:
        path = _resolve(name, download_root)
        checkpoint, is_archive = _read_checkpoint(path, device, jit=True)
        if is_archive:
            if on_cpu:
                checkpoint.float()
            return checkpoint, _transform(int(checkpoint.input_resolution.item()))
        warnings.warn(f"File {path} is not a JIT archive. Loading as a state dict instead")
        state_dict = checkpoint
    else:
        state_dict = load_state_dict(name, download_root)

    model = build_model(state_dict).to(device)
    if on_cpu:
        model.float()
    return model, _transform(model.visual.input_resolution)
