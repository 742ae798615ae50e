"""VPT on CLIP's hooks: MVLPT's and the MaPLe repository's variants, parameter counts, per-layer
replacement, and the MaPLe repository's VPT trainer end to end (its YAML and checkpoint layout)."""
import math
import os
from types import SimpleNamespace

import pytest
import torch

import clip
import train
from trainers.engine.registry import build_trainer
from trainers.prompts.vision import VisualPromptLearner, vpt_uniform_bound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_VPT = ["--trainer", "VPT", "--dataset-config-file", "configs/datasets/synthetic.yaml",
            "--config-file", "configs/trainers/VPT/tiny_vit_b16_c2_ep2_batch4_4.yaml"]


def vit_b16_shapes():
    """What VisualPromptLearner reads from a CLIP, at ViT-B/16's sizes (no 150M-parameter model needed)."""
    visual = SimpleNamespace(transformer=SimpleNamespace(layers=12, width=768),
                             conv1=SimpleNamespace(weight=torch.empty(768, 3, 16, 16)))
    return SimpleNamespace(is_vit=True, dtype=torch.float32, visual=visual)


def images(n=3, seed=0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def reference_image_features(model, x, layer_prompts, before_ln_pre):
    """MVLPT's / the MaPLe repository's image encoder written out: prompts of layer 0 join the
    sequence (after or before ln_pre), block i > 0 first replaces the prompt slots by layer i's."""
    v = model.visual
    x = v.conv1(x).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    n = layer_prompts[0].shape[-2]

    def insert(seq, p):
        return torch.cat([seq[:, :1], p.expand(seq.shape[0], -1, -1), seq[:, 1 + n:]], dim=1)

    if before_ln_pre:
        x = v.ln_pre(torch.cat([x[:, :1], layer_prompts[0].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1))
    else:
        x = v.ln_pre(x)
        x = torch.cat([x[:, :1], layer_prompts[0].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    for i, block in enumerate(v.transformer.resblocks):
        if 0 < i < len(layer_prompts):
            x = insert(x, layer_prompts[i])
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


# ----- parameters and initialisation --------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 16])
def test_deep_vpt_learns_12_n_768_parameters_at_vit_b16_widths(n):
    learner = VisualPromptLearner(vit_b16_shapes(), n)
    assert sum(p.numel() for p in learner.parameters()) == 12 * n * 768  # 73,728 (n=8), 147,456 (n=16)
    shallow = VisualPromptLearner(vit_b16_shapes(), n, depth=1)
    assert sum(p.numel() for p in shallow.parameters()) == n * 768


def test_mvlpt_init_is_uniform_within_vpts_bound_and_the_maple_variant_is_normal_002():
    assert vpt_uniform_bound(16, 768) == 0.0625
    torch.manual_seed(0)
    uniform = VisualPromptLearner(vit_b16_shapes(), 16).raw_prompts()
    assert uniform.abs().max() <= 0.0625 and uniform.abs().max() > 0.06
    assert abs(uniform.std().item() - 0.0625 / math.sqrt(3)) < 2e-3
    normal = VisualPromptLearner(vit_b16_shapes(), 8, init="normal").raw_prompts()
    assert abs(normal.std().item() - 0.02) < 1e-3


def test_projected_prompts_live_in_the_smaller_space_and_map_to_the_width():
    learner = VisualPromptLearner(vit_b16_shapes(), 4, project_dim=32)
    assert learner.vpt_embeddings.shape == (1, 4, 32) and learner.vpt_embeddings_deep.shape == (11, 4, 32)
    assert learner.encoder_prompts(2)["prompts"].shape == (4, 768)
    assert abs(vpt_uniform_bound(16, 32) - learner.raw_prompts().abs().max().item()) < 0.01


# ----- the image encoder with prompts --------------------------------------------------------------

@pytest.mark.parametrize("before_ln_pre,init", [(False, "uniform"), (True, "normal")])
def test_image_features_equal_the_written_out_encoder_of_both_variants(tiny_clip, before_ln_pre, init):
    learner = VisualPromptLearner(tiny_clip, 3, init=init, before_ln_pre=before_ln_pre)
    with torch.no_grad():
        learner.vpt_embeddings_deep.mul_(20)  # prompts that matter
        ours = tiny_clip.encode_image(images(), **learner.encoder_prompts(3))
        reference = reference_image_features(tiny_clip, images(), list(learner.raw_prompts()), before_ln_pre)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_before_and_after_ln_pre_differ(tiny_clip):
    torch.manual_seed(0)
    after = VisualPromptLearner(tiny_clip, 3, depth=1)
    before = VisualPromptLearner(tiny_clip, 3, depth=1, before_ln_pre=True)
    with torch.no_grad():
        after.vpt_embeddings.mul_(50)
        before.load_state_dict(after.state_dict())
        a = tiny_clip.encode_image(images(), **after.encoder_prompts(3))
        b = tiny_clip.encode_image(images(), **before.encoder_prompts(3))
    assert not torch.allclose(a, b, atol=1e-4)


def block_inputs(model, run):
    """The token sequence entering every vision block during ``run()``."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
             for b in model.visual.transformer.resblocks]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("depth", ["all", 1])
def test_every_block_runs_and_sees_only_its_own_layers_prompts(tiny_clip, depth):
    layers = tiny_clip.visual.transformer.layers
    depth = layers if depth == "all" else depth
    n = 3
    learner = VisualPromptLearner(tiny_clip, n, depth=depth)
    with torch.no_grad():
        learner.vpt_embeddings_deep is not None and learner.vpt_embeddings_deep.add_(1.0)
        kwargs = learner.encoder_prompts(2)
        seen = block_inputs(tiny_clip, lambda: tiny_clip.encode_image(images(2), **kwargs))
    assert len(seen) == layers  # no block is skipped (MVLPT skips blocks without a deep prompt set)
    patches = (224 // 16) ** 2
    assert all(x.shape[1] == 1 + n + patches for x in seen)
    prompts = learner.raw_prompts()
    for i in range(1, depth):
        assert torch.equal(seen[i][:, 1:1 + n], prompts[i].expand(2, -1, -1))  # no stale slot of layer i - 1


def test_dropout_draws_a_mask_per_sample_in_training_only(tiny_clip):
    learner = VisualPromptLearner(tiny_clip, 4, dropout=0.5)
    learner.train()
    prompts = learner.encoder_prompts(batch_size=3)["prompts"]
    assert prompts.shape[0] == 3 and not torch.equal(prompts[0], prompts[1])
    learner.eval()
    assert torch.equal(learner.encoder_prompts(3)["prompts"], learner.vpt_embeddings[0])


# ----- the MaPLe repository's VPT trainer ----------------------------------------------------------

def test_the_maple_repositorys_yaml_loads_unchanged_as_its_variant():
    cfg = train.setup_cfg(train.build_parser().parse_args(
        ["--trainer", "VPT", "--config-file", "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml"]))
    opts = cfg.TRAINER.VPT
    assert (opts.N_CTX_VISION, opts.PROMPT_DEPTH_VISION, opts.PREC) == (8, 12, "fp16")
    assert opts.PROMPTS_BEFORE_LN_PRE and opts.INIT == "normal" and opts.DROPOUT == 0.0
    shared = os.path.join("/work/shared/peer-configs/multimodal-prompt-learning/configs/trainers/VPT")
    if os.path.isdir(shared):
        for name in os.listdir(shared):
            ours = os.path.join(REPO, "configs/trainers/VPT", name)
            assert open(os.path.join(shared, name)).read() == open(ours).read()


def vpt_trainer(data_root, tmp_path, *opts):
    args = train.build_parser().parse_args(["--root", data_root, "--output-dir", str(tmp_path), *TINY_VPT,
                                            "DATASET.NUM_SHOTS", "1", *opts])
    return build_trainer(train.setup_cfg(args))


def test_vpt_trains_on_two_tasks_end_to_end(run_train, data_root, tmp_path):
    code, log = run_train("--root", data_root, "--seed", "1", *TINY_VPT, "DATASET.NAME", "Synthetic,SyntheticB",
                          "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1", output_dir=str(tmp_path))
    assert code == 0 and "=> task: Synthetic" in log and "=> task: SyntheticB" in log
    saved = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=False)["state_dict"]
    assert set(saved) == {"vpt_embeddings", "vpt_embeddings_deep"}  # the text side learns nothing
    assert "Fixed text prompt" in log


def test_an_original_vpt_checkpoint_gives_the_written_out_logits(data_root, tmp_path):
    trainer = vpt_trainer(data_root, tmp_path)
    model = trainer.model
    n, width = 4, model.clip.visual.transformer.width
    g = torch.Generator().manual_seed(3)
    first, deep = torch.randn(n, width, generator=g), torch.randn(n, width, generator=g)
    original = {"image_encoder.VPT": first, "image_encoder.transformer.resblocks.1.VPT_shallow": deep,
                "image_encoder.conv1.weight": model.clip.visual.conv1.weight.clone(),
                "logit_scale": model.logit_scale.detach().clone()}
    trainer.load_learned_weights("prompt_learner", original, "original VPT file")
    model.eval()
    x = images(2)
    with torch.no_grad():
        logits = model(x)
        image = reference_image_features(model.clip, x, [first, deep], before_ln_pre=True)
        names = [f"a photo of a {c}." for c in trainer.classnames]
        text = model.clip.encode_text(clip.tokenize(names))
        image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    assert torch.allclose(logits, model.logit_scale.exp() * image @ text.t(), atol=1e-4)
