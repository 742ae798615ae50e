"""MaPLe: coupled prompts through CLIP's hooks, the original's checkpoint layout, end to end."""
import copy
import os
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from trainers.maple import MultiModalPromptedCLIP
from trainers.prompts.coupled import MultiModalPromptLearner
from trainers.zsclip import FixedPromptCLIP

NAMES = ["red square", "blue circle", "green_triangle"]
TINY_MAPLE = ["--trainer", "MaPLe", "--dataset-config-file", "configs/datasets/synthetic.yaml",
              "--config-file", "configs/trainers/MaPLe/tiny_vit_b16_c2_ep2_batch4_2ctx.yaml"]


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 224, 224, generator=g)


def perturbed(learner, scale=0.5, seed=1):
    """Give every learned tensor values far from its initialisation, so prompts matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return learner


def maple(tiny_clip, **kwargs):
    learner = MultiModalPromptLearner(tiny_clip, NAMES, **kwargs)
    return MultiModalPromptedCLIP(tiny_clip, learner), learner


# ----- equivalences -------------------------------------------------------------------------------

def test_without_prompts_maple_is_zero_shot_clip_with_the_same_template(tiny_clip):
    model, learner = maple(tiny_clip, n_ctx=0, depth=1)
    assert learner.prompt_texts == ["a photo of a red square.", "a photo of a blue circle.",
                                    "a photo of a green triangle."]
    reference = FixedPromptCLIP(tiny_clip, [[f"a photo of a {n.replace('_', ' ')}."] for n in NAMES])
    x = images()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-4)


def test_shallow_maple_learns_a_photo_and_keeps_of_a_frozen(tiny_clip):
    """The prompt text is the whole init phrase; ctx replaces only its first N_CTX words."""
    model, learner = maple(tiny_clip, n_ctx=2, depth=1)
    assert len(learner.compound_prompts_text) == 0 and len(learner.compound_prompt_projections) == 0
    words = tiny_clip.token_embedding(clip.tokenize("a photo of a"))[0]
    assert torch.equal(learner.ctx.data, words[1:3])  # "a photo"
    assert torch.equal(learner.token_suffix[0, :2], words[3:5])  # "of a", frozen
    with torch.no_grad():  # at initialisation the text side is exactly "a photo of a <class>."
        expected = tiny_clip.encode_text(clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
        assert torch.allclose(model.class_text_features(), expected, atol=1e-5)
        # ... while the image side already carries the projected prompts.
        x = images(2)
        assert not torch.allclose(model.image_features(x), tiny_clip.encode_image(x), atol=1e-3)


def original_layout_image_features(visual, x, first, deep):
    """MaPLe's vision forward as the original lays it out: prompts appended after the patches
    before ln_pre; at layer i >= 1 the last n tokens are dropped and deep[i - 1] appended."""
    n, b = first.shape[0], x.shape[0]
    x = visual.conv1(x).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(b, 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, first.expand(b, -1, -1)], dim=1))
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-n], deep[i - 1].expand(b, -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def original_layout_text_features(clip_model, learner):
    """The original text encoder on all 77 positions: positions 1..n replaced at layers 1..J-1."""
    x = learner() + clip_model.positional_embedding
    deep, n = list(learner.compound_prompts_text), learner.n_ctx
    for i, block in enumerate(clip_model.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n:]], dim=1)
        x = block(x)
    x = clip_model.ln_final(x)
    return x[torch.arange(x.shape[0]), learner.eot_positions] @ clip_model.text_projection


@pytest.mark.parametrize("depth", [1, 2])
def test_logits_equal_the_original_layout_with_prompts_appended_at_the_end(tiny_clip, depth):
    tiny_clip = copy.deepcopy(tiny_clip)
    with torch.no_grad():  # a trained-looking ln_pre, so that "before ln_pre" is observable
        tiny_clip.visual.ln_pre.weight.uniform_(0.5, 1.5)
        tiny_clip.visual.ln_pre.bias.uniform_(-0.5, 0.5)
    model, learner = maple(tiny_clip, n_ctx=2, depth=depth)
    perturbed(learner)
    x = images(3)
    with torch.no_grad():
        deep = [layer(p) for layer, p in zip(learner.compound_prompt_projections, learner.compound_prompts_text)]
        reference_img = original_layout_image_features(tiny_clip.visual, x, learner.proj(learner.ctx), deep)
        reference_txt = original_layout_text_features(tiny_clip, learner)
        img, txt = model.encode(x)
        assert torch.allclose(img, reference_img, atol=1e-5)
        assert torch.allclose(txt, reference_txt, atol=1e-5)
        assert (img - tiny_clip.encode_image(x)).abs().max() > 1e-3  # the prompts do matter


def test_deep_prompts_reach_their_layers_and_slots(tiny_clip):
    model, learner = maple(tiny_clip, n_ctx=2, depth=2)
    perturbed(learner)
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].detach().clone()
        return hook

    text, vision = tiny_clip.transformer.resblocks, tiny_clip.visual.transformer.resblocks
    blocks = {"text0": text[0], "text1": text[1], "vision0": vision[0], "vision1": vision[1]}
    handles = [block.register_forward_pre_hook(record(name)) for name, block in blocks.items()]
    try:
        with torch.no_grad():
            model(images(2))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        ctx, deep_text = learner.ctx, learner.compound_prompts_text[0]
        deep_vision = learner.compound_prompt_projections[0](deep_text)
        first_vision = tiny_clip.visual.ln_pre(learner.proj(ctx))  # before ln_pre, so normalised with it
        text_pos = tiny_clip.positional_embedding[1:3]
    assert torch.allclose(seen["text0"][:, 1:3], (ctx + text_pos).expand(3, -1, -1), atol=1e-6)
    assert torch.allclose(seen["text1"][:, 1:3], deep_text.expand(3, -1, -1))
    assert torch.allclose(seen["vision0"][:, 1:3], first_vision.expand(2, -1, -1), atol=1e-5)
    assert torch.allclose(seen["vision1"][:, 1:3], deep_vision.expand(2, -1, -1))
    assert seen["vision1"].shape[1] == 1 + 196 + 2  # CLS, patches, prompts: replaced, not added


# ----- parameters --------------------------------------------------------------------------------

def test_parameters_names_count_dtypes_and_identical_projections(tiny_clip):
    n, depth, d_t, w_v = 2, 4, 64, 128
    learner = MultiModalPromptLearner(tiny_clip, NAMES, n_ctx=n, depth=depth)
    learned = dict(learner.named_parameters())
    assert set(learned) == {"ctx", "proj.weight", "proj.bias"} | {
        f"compound_prompts_text.{k}" for k in range(depth - 1)} | {
        f"compound_prompt_projections.{k}.{w}" for k in range(depth - 1) for w in ("weight", "bias")}
    assert set(learner.state_dict()) == set(learned) | {"token_prefix", "token_suffix"}
    assert sum(p.numel() for p in learned.values()) == depth * (n * d_t + d_t * w_v + w_v)
    first = learner.compound_prompt_projections[0]
    for layer in learner.compound_prompt_projections[1:]:
        assert torch.equal(layer.weight, first.weight) and torch.equal(layer.bias, first.bias)
        assert layer.weight is not first.weight
    prompts = learner.compound_prompts_text
    assert not torch.equal(prompts[0], prompts[1]) and 0.01 < prompts[0].std() < 0.04
    assert all(p.dtype == torch.float32 for p in learned.values())


def test_pure_fp16_keeps_the_original_dtypes_and_agrees_with_fp32(tiny_clip):
    from clip.loading import load_state_dict

    half_clip = clip.build_model(load_state_dict("tiny-ViT-B/16"))  # OpenAI's fp16 layout, as PREC fp16 uses
    half = MultiModalPromptLearner(half_clip, NAMES, n_ctx=2, depth=2)
    assert half.ctx.dtype == half.proj.weight.dtype == torch.float16
    assert half.compound_prompts_text[0].dtype == half.compound_prompt_projections[0].weight.dtype == torch.float32
    torch.manual_seed(0)
    model32, learner32 = maple(tiny_clip, n_ctx=2, depth=2)
    half.load_state_dict(perturbed(learner32, scale=0.1).state_dict())
    x = images(2)
    with torch.no_grad():
        logits = MultiModalPromptedCLIP(half_clip, half)(x)
        assert logits.dtype == torch.float16
        assert torch.allclose(logits.float(), model32(x), atol=0.15)


def test_vit_b16_recipe_has_the_papers_parameter_count():
    """~3.55M for ViT-B/16 (D_t 512, W_v 768) with 2 tokens and depth 9 (spec §4.1)."""
    class StubCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_final = nn.LayerNorm(512)
            self.token_embedding = nn.Embedding(49408, 512)
            self.visual = SimpleNamespace(transformer=SimpleNamespace(width=768))
            self.dtype = torch.float32

    learner = MultiModalPromptLearner(StubCLIP(), NAMES, n_ctx=2, depth=9)
    assert sum(p.numel() for p in learner.parameters()) == 3_555_072


def test_random_context_when_longer_than_four_and_short_phrase_is_an_error(tiny_clip):
    learner = MultiModalPromptLearner(tiny_clip, NAMES, n_ctx=5, depth=1)
    assert learner.prompt_texts[0] == "X X X X X red square."
    with pytest.raises(ValueError, match="fewer than the 3 context vectors"):
        MultiModalPromptLearner(tiny_clip, NAMES, n_ctx=3, ctx_init="a photo", depth=1)


def test_every_learned_tensor_gets_gradient_through_both_towers_and_a_batch_is_fitted(tiny_clip):
    torch.manual_seed(0)
    model, learner = maple(tiny_clip, n_ctx=2, depth=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x = 0.5 * images(6) + 2.0 * F.one_hot(labels, 3).float()[:, :, None, None]  # a colour per class
    assert model.image_features(x).requires_grad
    with torch.no_grad():
        assert not model.image_features(x).requires_grad
    optim = torch.optim.SGD(learner.parameters(), lr=0.0005, momentum=0.9)
    losses = []
    for step in range(10):
        loss = F.cross_entropy(model(x), labels)
        optim.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in learner.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
    assert all(p.grad is None for p in tiny_clip.parameters())


# ----- trainer ---------------------------------------------------------------------------------

def maple_args(root, *extra, seed=1):
    return TINY_MAPLE + ["--root", root, "--seed", str(seed), "DATASET.NUM_SHOTS", "4"] + list(extra)


def build(root, out, *extra, seed=1):
    import train
    from trainers.engine.logger import close_logger
    from trainers.engine.registry import build_trainer

    argv = ["--output-dir", str(out)] + maple_args(root, *extra, seed=seed)
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    try:
        return build_trainer(cfg)
    finally:
        close_logger()


def epoch_avg_losses(log):
    return [float(m) for m in re.findall(r"batch \[\d+/\d+\].* loss [\d.]+ \(([\d.]+)\)", log)]


def accuracy(log):
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


@pytest.mark.slow
def test_base_training_then_new_class_evaluation_from_the_checkpoint(run_train, data_root, tmp_path):
    out = str(tmp_path / "base")
    code, log = run_train(*maple_args(data_root, "DATASET.SUBSAMPLE_CLASSES", "base"), output_dir=out)
    assert code == 0
    per_epoch = epoch_avg_losses(log)
    assert len(per_epoch) == 2 and per_epoch[-1] < per_epoch[0], per_epoch
    path = os.path.join(out, "MultiModalPromptLearner", "model.pth.tar-2")
    saved = torch.load(path, weights_only=True)["state_dict"]
    deep = [f"compound_prompts_text.{i}" for i in range(8)] + [
        f"compound_prompt_projections.{i}.{w}" for i in range(8) for w in ("weight", "bias")]  # PROMPT_DEPTH 9
    assert set(saved) == {"prompt_learner." + k for k in ["ctx", "proj.weight", "proj.bias", "token_prefix",
                                                         "token_suffix"] + deep}

    base_eval = ["--model-dir", out, "--load-epoch", "2", "--eval-only"]
    code, log_again = run_train(*(base_eval + maple_args(data_root, "DATASET.SUBSAMPLE_CLASSES", "base")),
                                output_dir=str(tmp_path / "base_eval"))
    assert code == 0 and accuracy(log_again) == accuracy(log)
    code, log_new = run_train(*(base_eval + maple_args(data_root, "DATASET.SUBSAMPLE_CLASSES", "new")),
                              output_dir=str(tmp_path / "new"))
    assert code == 0 and "Loading weights to MultiModalPromptLearner" in log_new
    assert "SUBSAMPLE NEW CLASSES!" in log_new and "* total: 40" in log_new


ORIGINAL_RECIPE = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"


@pytest.mark.slow
def test_original_recipe_with_prompt_depth_nine_runs_on_the_tiny_clip(run_train, data_root, tmp_path):
    """MaPLe's own YAML (PROMPT_DEPTH 9, PREC fp16) as written, but for the backbone, a short run and no
    loader workers: the tiny CLIP's 12 layers take every deep prompt."""
    out = str(tmp_path)
    code, log = run_train("--root", data_root, "--seed", "1", "--trainer", "MaPLe", "--dataset-config-file",
                          "configs/datasets/synthetic.yaml", "--config-file", ORIGINAL_RECIPE,
                          "MODEL.BACKBONE.NAME", "tiny-ViT-B/16", "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1",
                          "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.NUM_WORKERS", "0", output_dir=out)
    assert code == 0 and "Finish training" in log and "* total: 40" in log and "* accuracy:" in log
    saved = torch.load(os.path.join(out, "MultiModalPromptLearner", "model.pth.tar-1"), weights_only=True)
    state = saved["state_dict"]
    assert {k for k in state if ".compound_prompts_text." in k} == {
        f"prompt_learner.compound_prompts_text.{i}" for i in range(8)}  # layers 1..8 after the first
    assert state["prompt_learner.ctx"].dtype == torch.float16  # the recipe's fp16, kept


@pytest.mark.slow
def test_amp_trains_on_the_cpu_with_bfloat16(run_train, data_root, tmp_path, tiny_clip):
    code, log = run_train(*maple_args(data_root, "TRAINER.MAPLE.PREC", "amp", "DATASET.NUM_SHOTS", "1",
                                      "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1",
                                      "TEST.NO_TEST", "True"), output_dir=str(tmp_path))
    assert code == 0
    losses = [float(v) for v in re.findall(r" loss ([\d.]+) \(", log)]
    assert losses and all(0 < v < 20 for v in losses)
    saved = torch.load(os.path.join(str(tmp_path), "MultiModalPromptLearner", "model.pth.tar-1"), weights_only=True)
    ctx = saved["state_dict"]["prompt_learner.ctx"]
    assert ctx.dtype == torch.float32  # fp32 master weights
    with torch.no_grad():
        assert not torch.allclose(ctx, tiny_clip.token_embedding(clip.tokenize("a photo"))[0, 1:3], atol=1e-6)


def original_checkpoint(trainer):
    """What the original MaPLe saves: the whole CustomCLIP (prompt learner with token buffers,
    frozen image_encoder.* / text_encoder.* / logit_scale), in Dassl's dict."""
    clip_model, learner = trainer.model.clip, trainer.model.prompt_learner
    state = {"prompt_learner." + k: v.clone() for k, v in learner.state_dict().items()}
    state["prompt_learner.token_prefix"] = state["prompt_learner.token_prefix"][:3]  # other classes
    state["prompt_learner.token_suffix"] = state["prompt_learner.token_suffix"][:3]
    state.update({"image_encoder." + k: v for k, v in clip_model.visual.state_dict().items()})
    for part in ("transformer", "ln_final"):
        state.update({f"text_encoder.{part}.{k}": v for k, v in getattr(clip_model, part).state_dict().items()})
    state["text_encoder.positional_embedding"] = clip_model.positional_embedding
    state["text_encoder.text_projection"] = clip_model.text_projection
    state["logit_scale"] = clip_model.logit_scale
    return {"state_dict": state, "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None}


def test_original_checkpoint_loads_for_eval_and_reproduces_the_logits(data_root, tmp_path, monkeypatch):
    from trainers.engine.checkpoint import CheckpointMismatchError

    source = build(data_root, tmp_path / "a", "DATASET.SUBSAMPLE_CLASSES", "base")
    perturbed(source.model.prompt_learner)
    x = images(3)
    source.set_model_mode("eval")
    with torch.no_grad(), source.model.cached_text_features():
        expected = source.model(x)
    folder = tmp_path / "original" / "MultiModalPromptLearner"
    folder.mkdir(parents=True)
    torch.save(original_checkpoint(source), str(folder / "model.pth.tar-5"))

    target = build(data_root, tmp_path / "b", "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.TEST.BATCH_SIZE", "16",
                   seed=2)
    with torch.no_grad():
        assert not torch.allclose(target.model(x), expected, atol=1e-3)
    target.load_model(str(tmp_path / "original"), epoch=5)
    target.set_model_mode("eval")
    with torch.no_grad(), target.model.cached_text_features():
        assert torch.allclose(target.model(x), expected, atol=1e-5)

    calls = []
    encode = type(target.model).class_text_features
    monkeypatch.setattr(type(target.model), "class_text_features", lambda self: calls.append(1) or encode(self))
    target.test()
    assert len(target.test_loader) == 3 and len(calls) == 1  # text encoded once per evaluation

    shallow = build(data_root, tmp_path / "c", "TRAINER.MAPLE.PROMPT_DEPTH", "1")
    with pytest.raises(CheckpointMismatchError, match=r"PROMPT_DEPTH 1.*compound_prompts_text\.0"):
        shallow.load_model(str(tmp_path / "original"), epoch=5)


def test_backbone_and_depth_errors_name_the_requirement(data_root, tmp_path):
    with pytest.raises(ValueError, match="needs a ViT backbone.*tiny-RN50"):
        build(data_root, tmp_path, "MODEL.BACKBONE.NAME", "tiny-RN50")
    with pytest.raises(ValueError, match=r"PROMPT_DEPTH 13 exceeds the layers of 'tiny-ViT-B/16' \(text 12, vision 12\)"):
        build(data_root, tmp_path, "TRAINER.MAPLE.PROMPT_DEPTH", "13")
    with pytest.raises(ValueError, match="PROMPT_DEPTH must be >= 1"):
        build(data_root, tmp_path, "TRAINER.MAPLE.PROMPT_DEPTH", "0")
