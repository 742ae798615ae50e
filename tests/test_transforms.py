"""build_transform: Dassl's pipelines and log lines for the CoOp configs, every op, and errors."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode

from datasets.transforms import AVAILABLE_TRANSFORMS, Cutout, InstanceNormalization, build_transform
from trainers.engine.config import get_cfg_default

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def coop_cfg():
    cfg = get_cfg_default()
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    return cfg


def test_coop_train_pipeline_and_log(capsys):
    tfm = build_transform(coop_cfg(), is_train=True)
    assert capsys.readouterr().out.splitlines() == [
        "Building transform_train",
        "+ random resized crop (size=(224, 224), scale=(0.08, 1.0))",
        "+ random flip",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
    ]
    steps = tfm.transforms
    assert [type(s) for s in steps] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert steps[0].interpolation == InterpolationMode.BICUBIC and steps[0].scale == (0.08, 1.0)
    assert tfm(Image.new("RGB", (300, 200))).shape == (3, 224, 224)


def test_coop_test_pipeline_matches_clip_preprocessing(capsys):
    tfm = build_transform(coop_cfg(), is_train=False)
    assert capsys.readouterr().out.splitlines() == [
        "Building transform_test",
        "+ resize the smaller edge to 224",
        "+ 224x224 center crop",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
    ]
    img = Image.effect_noise((320, 240), 40).convert("RGB")
    clip_like = T.Compose([T.Resize(224, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    assert torch.equal(tfm(img), clip_like(img))


def test_every_op_builds_and_runs_in_order(capsys):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.GB_K = 3
    cfg.INPUT.TRANSFORMS = tuple(reversed(AVAILABLE_TRANSFORMS))  # order in the config does not matter
    tfm = build_transform(cfg, is_train=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines.index("+ random translation") < lines.index("+ random crop (padding = 4)")
    assert lines.index("+ to torch tensor of range [0, 1]") < lines.index("+ cutout (n_holes=1, length=16)")
    assert lines[-1] == "+ instance normalization"
    assert "+ color jitter (brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)" in lines
    torch.manual_seed(0)
    out = tfm(Image.effect_noise((40, 48), 60).convert("RGB"))
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_resize_when_no_crop_is_selected(capsys):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (16, 24)
    cfg.INPUT.TRANSFORMS = ("random_flip",)
    tfm = build_transform(cfg, is_train=True)
    assert "+ resize to 16x24" in capsys.readouterr().out
    assert tfm(Image.new("RGB", (50, 50))).shape == (3, 16, 24)


def test_unknown_names_fail_with_the_known_ones():
    cfg = get_cfg_default()
    cfg.INPUT.TRANSFORMS = ("random_flip", "random_rotate")
    with pytest.raises(ValueError, match="random_rotate.*random_resized_crop"):
        build_transform(cfg, is_train=True)
    cfg.INPUT.TRANSFORMS = ()
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(ValueError, match="bicubic"):
        build_transform(cfg, is_train=False)


def test_no_transform(capsys):
    cfg = get_cfg_default()
    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg, is_train=True) is None
    assert "Note: no transform is applied!" in capsys.readouterr().out


def test_cutout_and_instance_norm():
    torch.manual_seed(0)
    img = torch.ones(3, 20, 20)
    out = Cutout(n_holes=1, length=8)(img)
    assert 0 < (out == 0).sum() <= 3 * 64 and (out[0] == out[1]).all()
    normed = InstanceNormalization()(torch.rand(3, 10, 10) * 5 + 2)
    assert torch.allclose(normed.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normed.reshape(3, -1).std(1), torch.ones(3), atol=1e-4)
