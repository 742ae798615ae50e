"""clip.load: names, cache, checksums, TorchScript archives and state dicts, preprocessing, tiny models."""
from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.error
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

import clip
from clip import loading, tokenize
from clip.model import CLIP
from clip.tiny import TINY_CONFIGS, save_torchscript_archive, tiny_state_dict

VIT, RN = "tiny-ViT-B/16", "tiny-RN50"
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def vit_sd() -> Dict[str, Tensor]:
    return tiny_state_dict(VIT)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory, vit_sd) -> Path:
    path = tmp_path_factory.mktemp("files") / "tiny_vit_state_dict.pt"
    torch.save(vit_sd, path)
    return path


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Dict[str, Path]:
    """One TorchScript archive per tiny model, shaped like OpenAI's released files."""
    root = tmp_path_factory.mktemp("archives")
    paths = {}
    for name in (VIT, RN):
        paths[name] = root / (name.replace("/", "-") + ".pt")
        save_torchscript_archive(tiny_state_dict(name), str(paths[name]))
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _features(model, seed: int = 0):
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    text = tokenize(["a photo of a dog.", "cat", "X X X X a small red car."])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _FakeResponse(io.BytesIO):
    """What urllib.request.urlopen returns, as far as the downloader uses it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


# --- model table -------------------------------------------------------------------------------

def test_available_models_are_openais_nine():
    names = clip.available_models()
    assert names == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                     "ViT-L/14@336px"]
    files = ["RN50.pt", "RN101.pt", "RN50x4.pt", "RN50x16.pt", "RN50x64.pt", "ViT-B-32.pt", "ViT-B-16.pt",
             "ViT-L-14.pt", "ViT-L-14-336px.pt"]
    for name, file in zip(names, files):
        assert re.fullmatch(r"https://openaipublic\.azureedge\.net/clip/models/[0-9a-f]{64}/" + re.escape(file),
                            loading._MODELS[name])
    assert loading._MODELS["ViT-B/16"].split("/")[-2] == \
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    assert not set(names) & set(clip.tiny_models())
    assert {VIT, RN} <= set(clip.tiny_models())


def test_unknown_name_lists_models():
    with pytest.raises(RuntimeError) as info:
        clip.load("ViT-H/99", device="cpu")
    message = str(info.value)
    assert "ViT-H/99" in message
    assert all(name in message for name in clip.available_models() + clip.tiny_models())


# --- file formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [VIT, RN])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_archive_and_state_dict_give_identical_features(tmp_path, archives, name):
    sd = tiny_state_dict(name)
    archive, plain = archives[name], tmp_path / "plain.pt"
    torch.save(sd, plain)

    scripted = torch.jit.load(str(archive))
    assert set(scripted.state_dict()) == set(sd) | {"input_resolution", "context_length", "vocab_size"}
    assert int(scripted.input_resolution) == 224

    from_archive, _ = clip.load(str(archive), device="cpu")
    from_plain, _ = clip.load(str(plain), device="cpu")
    assert isinstance(from_archive, CLIP) and _same_weights(from_archive, from_plain)
    image_a, text_a = _features(from_archive)
    image_p, text_p = _features(from_plain)
    assert torch.equal(image_a, image_p) and torch.equal(text_a, text_p)

    jit_model, preprocess = clip.load(str(archive), device="cpu", jit=True)
    assert isinstance(jit_model, torch.jit.ScriptModule)
    assert all(p.dtype == torch.float32 for p in jit_model.parameters())
    image_j, text_j = _features(jit_model)  # batch sizes differ from the ones traced
    torch.testing.assert_close(image_j, image_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_j, text_p, rtol=1e-5, atol=1e-5)  # traced at 77 tokens, untruncated
    assert preprocess(Image.new("RGB", (300, 260))).shape == (3, 224, 224)


@pytest.mark.parametrize("wrap", ["plain", "with_metadata", "state_dict", "model"])
def test_state_dict_file_variants_load(tmp_path, vit_sd, wrap):
    sd = dict(vit_sd)
    if wrap == "with_metadata":
        sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                  vocab_size=torch.tensor(49408))
    obj = {wrap: sd, "epoch": 3} if wrap in ("state_dict", "model") else sd
    torch.save(obj, tmp_path / "ckpt.pth")
    model, _ = clip.load(str(tmp_path / "ckpt.pth"), device="cpu")
    reference = {k: v.float() for k, v in vit_sd.items()}
    assert model.state_dict().keys() == reference.keys()
    assert all(torch.equal(model.state_dict()[k].float(), reference[k]) for k in reference)


@pytest.mark.parametrize("kind", ["archive", "state_dict", "tiny_name"])
def test_load_state_dict_reads_clip_for_build_model(tmp_path, archives, vit_file, kind):
    """CoOp's load_clip_to_cpu route: name or path -> CPU state dict -> build_model."""
    source = {"archive": str(archives[VIT]), "state_dict": str(vit_file), "tiny_name": VIT}[kind]
    sd = loading.load_state_dict(source, download_root=str(tmp_path))
    reference = tiny_state_dict(VIT)
    extra = {"input_resolution", "context_length", "vocab_size"} if kind == "archive" else set()
    assert set(sd) == set(reference) | extra
    assert all(torch.equal(sd[k], reference[k]) and sd[k].device.type == "cpu" for k in reference)
    assert clip.build_model(sd).dtype == torch.float16


def test_cpu_load_is_fp32_like_openai(vit_file):
    model, _ = clip.load(str(vit_file), device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_jit_request_on_state_dict_file_falls_back(vit_file):
    with pytest.warns(UserWarning, match="not a JIT archive"):
        model, _ = clip.load(str(vit_file), device="cpu", jit=True)
    assert isinstance(model, CLIP)


@pytest.mark.parametrize("damage", ["truncated_state_dict", "truncated_archive", "garbage", "empty"])
def test_corrupt_file_is_a_clear_error(tmp_path, vit_file, archives, damage):
    if damage == "truncated_archive":
        data = archives[RN].read_bytes()[:50_000]
    else:
        data = {"truncated_state_dict": vit_file.read_bytes()[:100_000], "garbage": b"not a checkpoint" * 8,
                "empty": b""}[damage]
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data)
    with pytest.raises(RuntimeError, match="neither a TorchScript archive nor a state dict") as info:
        clip.load(str(broken), device="cpu")
    assert str(broken) in str(info.value) and "delete it" in str(info.value)


def test_non_state_dict_content_is_a_clear_error(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": [0.1]}, path)
    with pytest.raises(RuntimeError, match="not a CLIP state dict"):
        clip.load(str(path), device="cpu")


def test_local_path_loads_without_checksum(tmp_path, vit_sd, monkeypatch):
    path = tmp_path / "ViT-B-16.pt"  # even with a released model's file name
    torch.save(vit_sd, path)
    monkeypatch.setattr(loading, "_sha256", lambda p: pytest.fail(f"checksum computed for {p}"))
    model, _ = clip.load(str(path), device="cpu")
    assert model.is_vit


# --- names, cache folder, checksums, downloads -------------------------------------------------

@pytest.fixture
def no_network(monkeypatch) -> List[str]:
    """urlopen that records the URL and fails as an offline machine does."""
    calls: List[str] = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(loading.urllib.request, "urlopen", offline)
    return calls


def _register(monkeypatch, sha: str, name: str = "ViT-B/16") -> str:
    url = f"https://example.invalid/clip/models/{sha}/ViT-B-16.pt"
    monkeypatch.setitem(loading._MODELS, name, url)
    return url


def test_name_maps_to_cached_file_and_checks_sha256(tmp_path, vit_sd, monkeypatch, no_network):
    cached = tmp_path / "ViT-B-16.pt"
    torch.save(vit_sd, cached)
    _register(monkeypatch, _sha256(cached))
    hashed: List[str] = []
    real_sha = loading._sha256
    monkeypatch.setattr(loading, "_sha256", lambda p: hashed.append(p) or real_sha(p))
    model, _ = clip.load("ViT-B/16", device="cpu", download_root=str(tmp_path))
    assert hashed == [str(cached)] and no_network == []
    assert model.is_vit and model.dtype == torch.float32


def test_sha256_mismatch_retries_download_and_explains_offline(tmp_path, vit_sd, monkeypatch, no_network):
    cached = tmp_path / "ViT-B-16.pt"
    torch.save(vit_sd, cached)
    before = cached.read_bytes()
    url = _register(monkeypatch, "0" * 64)
    with pytest.warns(UserWarning, match="does not match"), pytest.raises(RuntimeError) as info:
        clip.load("ViT-B/16", device="cpu", download_root=str(tmp_path))
    message = str(info.value)
    assert no_network == [url]
    assert "'ViT-B/16'" in message and str(cached) in message and url in message
    assert cached.read_bytes() == before and os.listdir(tmp_path) == ["ViT-B-16.pt"]


def test_missing_file_is_downloaded_verified_and_renamed(tmp_path, vit_file, monkeypatch):
    payload = vit_file.read_bytes()
    url = _register(monkeypatch, hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(loading.urllib.request, "urlopen", lambda u: _FakeResponse(payload))
    model, _ = clip.load("ViT-B/16", device="cpu", download_root=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == ["ViT-B-16.pt"]
    assert (tmp_path / "cache" / "ViT-B-16.pt").read_bytes() == payload and url.endswith("ViT-B-16.pt")
    assert model.is_vit


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    _register(monkeypatch, "f" * 64)
    monkeypatch.setattr(loading.urllib.request, "urlopen", lambda u: _FakeResponse(b"something else"))
    with pytest.raises(RuntimeError, match="checksum does not match"):
        clip.load("ViT-B/16", device="cpu", download_root=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_cache_env_var_moves_the_cache(tmp_path, monkeypatch, vit_sd, no_network):
    monkeypatch.setenv("VLPROMPT_CLIP_CACHE", str(tmp_path / "env_cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert loading.cache_dir() == str(tmp_path / "env_cache")
    assert loading.cache_dir(str(tmp_path / "explicit")) == str(tmp_path / "explicit")
    clip.load(VIT, device="cpu")
    assert os.listdir(tmp_path / "env_cache") == ["tiny-ViT-B-16.pt"]

    _register(monkeypatch, "0" * 64)
    with pytest.raises(RuntimeError, match=re.escape(str(tmp_path / "env_cache" / "ViT-B-16.pt"))):
        clip.load("ViT-B/16", device="cpu")

    monkeypatch.delenv("VLPROMPT_CLIP_CACHE")
    assert loading.cache_dir() == str(tmp_path / "home" / ".cache" / "clip")


# --- tiny models -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [VIT, RN])
def test_tiny_model_loads_deterministically(tmp_path, name):
    first, preprocess = clip.load(name, device="cpu", download_root=str(tmp_path))
    written = tmp_path / name.replace("/", "-")
    written = written.with_name(written.name + ".pt")
    assert os.listdir(tmp_path) == [written.name]
    second, _ = clip.load(name, device="cpu", download_root=str(tmp_path))  # from the file
    written.unlink()
    third, _ = clip.load(name, device="cpu", download_root=str(tmp_path))  # regenerated
    assert _same_weights(first, second) and _same_weights(first, third)
    assert first.dtype == torch.float32 and first.is_vit == (name == VIT)
    assert first.logit_scale.exp().item() == pytest.approx(100.0)
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 224, 224)


def test_tiny_model_file_goes_through_the_state_dict_loader(tmp_path, monkeypatch):
    calls: List[str] = []
    real = loading._read_checkpoint
    monkeypatch.setattr(loading, "_read_checkpoint", lambda path, *a, **kw: calls.append(path) or real(path, *a, **kw))
    clip.load(RN, device="cpu", download_root=str(tmp_path))
    assert calls == [str(tmp_path / "tiny-RN50.pt")]
    assert isinstance(torch.load(calls[0], weights_only=True), dict)


# --- preprocessing -----------------------------------------------------------------------------

def _hand_preprocess(image: Image.Image, n: int) -> np.ndarray:
    """Shorter side to n (bicubic), centre crop n x n, RGB, [0, 1], CLIP mean/std."""
    w, h = image.size
    if w <= h:
        size = (n, int(n * h / w))
    else:
        size = (int(n * w / h), n)
    resized = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - n) / 2.0)), int(round((size[1] - n) / 2.0))
    cropped = resized.crop((left, top, left + n, top + n)).convert("RGB")
    array = np.asarray(cropped, dtype=np.float64) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_preprocess_matches_hand_computation(tmp_path, mode):
    config = dict(TINY_CONFIGS[VIT], image_resolution=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(CLIP(**config).state_dict(), tmp_path / "res64.pt")
    model, preprocess = clip.load(str(tmp_path / "res64.pt"), device="cpu")
    assert model.input_resolution == 64

    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 14, 3) if mode == "RGB" else (9, 14))
    image = Image.fromarray(pixels.astype(np.uint8), mode=mode)
    out = preprocess(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _hand_preprocess(image, 64), rtol=0, atol=1e-5)


def test_an_older_tiny_clip_file_is_kept_aside_and_rewritten_in_the_current_layout(tmp_path):
    from clip.tiny import TINY_CONFIGS, tiny_file_name
    from clip.model import CLIP

    old = dict(TINY_CONFIGS["tiny-ViT-B/16"], vision_layers=2, transformer_layers=2)
    path = tmp_path / tiny_file_name("tiny-ViT-B/16")
    torch.save(CLIP(**old).state_dict(), path)
    model, _ = clip.load("tiny-ViT-B/16", device="cpu", download_root=str(tmp_path))
    assert model.transformer.layers == TINY_CONFIGS["tiny-ViT-B/16"]["transformer_layers"] == 12
    stale = torch.load(str(path) + ".stale", weights_only=True)
    assert "transformer.resblocks.1.ln_1.weight" in stale and "transformer.resblocks.2.ln_1.weight" not in stale
    again, _ = clip.load("tiny-ViT-B/16", device="cpu", download_root=str(tmp_path))  # current file: reused
    assert torch.equal(again.positional_embedding, model.positional_embedding)
