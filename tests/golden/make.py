"""Write the golden outputs of every tiny CLIP: ``python -m tests.golden.make`` (from the repo root).

``tests/test_golden.py`` recomputes the same outputs on every run and compares them with
these files, so a silent change of CLIP's forward, the tiny initialisation, the loader or
the tokenizer fails the tests. Regenerate only for an intended change, and say why in the
commit. The inputs are fixed: seeded images and a few prompts; the model is ``clip.load``'s
fp32 copy of the tiny file (fp16 weights, as released files store them).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List, Optional

import torch

import clip

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["a photo of a red square.", "a blurry photo of a blue circle.", "green_triangle"]
NUM_IMAGES = 2
IMAGE_SEED = 0


def golden_path(name: str) -> str:
    """JSON file of a tiny model's outputs ("tiny-ViT-B/16" -> tiny-ViT-B-16.json)."""
    return os.path.join(GOLDEN_DIR, name.replace("/", "-") + ".json")


def golden_outputs(name: str, download_root: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Image features, text features and image-to-text logits of ``name`` on the fixed inputs (fp32, CPU)."""
    model, _ = clip.load(name, device="cpu", download_root=download_root)
    resolution = model.visual.input_resolution
    generator = torch.Generator().manual_seed(IMAGE_SEED)
    images = torch.randn(NUM_IMAGES, 3, resolution, resolution, generator=generator)
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(clip.tokenize(PROMPTS))
        logits_per_image, _ = model(images, clip.tokenize(PROMPTS))
    return {"image_features": image_features, "text_features": text_features, "logits_per_image": logits_per_image}


def read_golden(name: str) -> Dict[str, torch.Tensor]:
    """The stored outputs of ``name`` as fp32 tensors."""
    with open(golden_path(name)) as f:
        stored = json.load(f)
    return {key: torch.tensor(values, dtype=torch.float32) for key, values in stored["outputs"].items()}


def write_golden(names: List[str]) -> None:
    """Compute and store the outputs of ``names``, loading the tiny files from a throw-away cache."""
    with tempfile.TemporaryDirectory() as cache:
        for name in names:
            outputs = golden_outputs(name, download_root=cache)
            record = {"model": name, "prompts": PROMPTS, "images": f"randn({NUM_IMAGES}, 3, R, R), seed {IMAGE_SEED}",
                      "torch": torch.__version__, "outputs": {k: v.tolist() for k, v in outputs.items()}}
            with open(golden_path(name), "w") as f:
                json.dump(record, f, indent=1)
                f.write("\n")
            print(f"wrote {golden_path(name)}")


if __name__ == "__main__":
    write_golden(clip.tiny_models())
