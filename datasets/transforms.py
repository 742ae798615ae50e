"""Image transforms chosen by ``INPUT.TRANSFORMS``, built in Dassl's fixed order with its log lines.

For the CoOp configs this gives exactly Dassl's pipelines: train = RandomResizedCrop ->
RandomHorizontalFlip -> ToTensor -> Normalize; test = Resize(shorter side) -> CenterCrop ->
ToTensor -> Normalize (equal to CLIP's own preprocessing for square inputs). Randomness comes
from torch's RNG, which DataLoader workers seed per worker.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode

from clip.errors import InvalidInputError

__all__ = ["build_transform", "INTERPOLATION_MODES", "AVAILABLE_TRANSFORMS", "Random2DTranslation",
           "Cutout", "GaussianNoise", "InstanceNormalization"]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

# Every name INPUT.TRANSFORMS may hold, in the order the train pipeline applies them.
AVAILABLE_TRANSFORMS = (
    "random_translation", "random_crop", "random_resized_crop", "center_crop", "random_flip",
    "imagenet_policy", "cifar10_policy", "svhn_policy", "randaugment", "colorjitter",
    "randomgrayscale", "gaussian_blur", "cutout", "normalize", "gaussian_noise", "instance_norm",
)


class Random2DTranslation:
    """With probability p, enlarge by 1.125 and crop (height, width) at a random offset; else just resize."""

    def __init__(self, height: int, width: int, p: float = 0.5) -> None:
        self.height, self.width, self.p = height, width, p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1).item() > self.p:
            return img.resize((self.width, self.height), Image.BILINEAR)
        new_w, new_h = round(self.width * 1.125), round(self.height * 1.125)
        enlarged = img.resize((new_w, new_h), Image.BILINEAR)
        x1 = round(torch.rand(1).item() * (new_w - self.width))
        y1 = round(torch.rand(1).item() * (new_h - self.height))
        return enlarged.crop((x1, y1, x1 + self.width, y1 + self.height))


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` centred at random pixels (clipped at the borders)."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes, self.length = n_holes, length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1:]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y, x = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
            half = self.length // 2
            mask[max(y - half, 0):min(y + half, h), max(x - half, 0):min(x + half, w)] = 0
        return img * mask


class GaussianNoise:
    """Add N(mean, std) noise with probability p."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(1).item() > self.p:
            return img
        return img + torch.randn_like(img) * self.std + self.mean


class InstanceNormalization:
    """Normalise each channel of one image by its own mean and standard deviation."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        flat = img.reshape(img.shape[0], -1)
        mean = flat.mean(1).view(-1, 1, 1)
        std = flat.std(1).view(-1, 1, 1)
        return (img - mean) / (std + self.eps)


def interpolation_mode(name: str) -> InterpolationMode:
    if name not in INTERPOLATION_MODES:
        raise InvalidInputError(f"INPUT.INTERPOLATION must be one of {sorted(INTERPOLATION_MODES)}, got {name!r}")
    return INTERPOLATION_MODES[name]


def build_transform(cfg: Any, is_train: bool = True, choices: Optional[Sequence[str]] = None
                    ) -> Optional[Callable]:
    """The train or test transform for ``cfg.INPUT`` (``choices`` overrides ``INPUT.TRANSFORMS``).

    Returns None when ``INPUT.NO_TRANSFORM`` is set (the loader then yields PIL images).
    """
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    unknown = [c for c in choices if c not in AVAILABLE_TRANSFORMS]
    if unknown:
        raise InvalidInputError(f"Unknown transform(s) {unknown} in INPUT.TRANSFORMS; known: {list(AVAILABLE_TRANSFORMS)}")
    interp = interpolation_mode(cfg.INPUT.INTERPOLATION)
    size = tuple(cfg.INPUT.SIZE)
    build = _build_train if is_train else _build_test
    return T.Compose(build(cfg, choices, size, interp))


def _add_normalize(cfg: Any, choices: List[str], steps: List[Callable]) -> None:
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        steps.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))


def _build_train(cfg: Any, choices: List[str], size: tuple, interp: InterpolationMode) -> List[Callable]:
    print("Building transform_train")
    inp = cfg.INPUT
    steps: List[Callable] = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {size[0]}x{size[1]}")
        steps.append(T.Resize(size, interpolation=interp))
    if "random_translation" in choices:
        print("+ random translation")
        steps.append(Random2DTranslation(size[0], size[1]))
    if "random_crop" in choices:
        print(f"+ random crop (padding = {inp.CROP_PADDING})")
        steps.append(T.RandomCrop(size, padding=inp.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(inp.RRCROP_SCALE)
        print(f"+ random resized crop (size={size}, scale={scale})")
        steps.append(T.RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "center_crop" in choices:
        print("+ center crop (on 1.125x enlarged input)")
        steps += [T.Resize([int(s * 1.125) for s in size], interpolation=interp), T.CenterCrop(size)]
    if "random_flip" in choices:
        print("+ random flip")
        steps.append(T.RandomHorizontalFlip())
    policies = {"imagenet_policy": T.AutoAugmentPolicy.IMAGENET, "cifar10_policy": T.AutoAugmentPolicy.CIFAR10,
                "svhn_policy": T.AutoAugmentPolicy.SVHN}
    for name, policy in policies.items():
        if name in choices:
            print(f"+ {name.replace('_', ' ')}")
            steps.append(T.AutoAugment(policy, interpolation=interp))
    if "randaugment" in choices:
        print(f"+ randaugment (n={inp.RANDAUGMENT_N}, m={inp.RANDAUGMENT_M})")
        steps.append(T.RandAugment(num_ops=inp.RANDAUGMENT_N, magnitude=inp.RANDAUGMENT_M, interpolation=interp))
    if "colorjitter" in choices:
        b, c, s, h = inp.COLORJITTER_B, inp.COLORJITTER_C, inp.COLORJITTER_S, inp.COLORJITTER_H
        print(f"+ color jitter (brightness={b}, contrast={c}, saturation={s}, hue={h})")
        steps.append(T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if "randomgrayscale" in choices:
        print("+ random gray scale")
        steps.append(T.RandomGrayscale(p=inp.RGS_P))
    if "gaussian_blur" in choices:
        print(f"+ gaussian blur (kernel={inp.GB_K})")
        steps.append(T.RandomApply([T.GaussianBlur(inp.GB_K)], p=inp.GB_P))
    print("+ to torch tensor of range [0, 1]")
    steps.append(T.ToTensor())
    if "cutout" in choices:
        print(f"+ cutout (n_holes={inp.CUTOUT_N}, length={inp.CUTOUT_LEN})")
        steps.append(Cutout(inp.CUTOUT_N, inp.CUTOUT_LEN))
    _add_normalize(cfg, choices, steps)
    if "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={inp.GN_MEAN}, std={inp.GN_STD})")
        steps.append(GaussianNoise(inp.GN_MEAN, inp.GN_STD))
    if "instance_norm" in choices:
        print("+ instance normalization")
        steps.append(InstanceNormalization())
    return steps


def _build_test(cfg: Any, choices: List[str], size: tuple, interp: InterpolationMode) -> List[Callable]:
    print("Building transform_test")
    print(f"+ resize the smaller edge to {max(size)}")
    print(f"+ {size[0]}x{size[1]} center crop")
    print("+ to torch tensor of range [0, 1]")
    steps: List[Callable] = [T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()]
    _add_normalize(cfg, choices, steps)
    if "instance_norm" in choices:
        print("+ instance normalization")
        steps.append(InstanceNormalization())
    return steps
