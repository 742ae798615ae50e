"""MVLPT: UPT's theta in both attention modes, per-layer prompts, the multi-task loss and model
selection, MVLPT's command line and YAMLs, source -> target loading, original checkpoints,
activation checkpointing, seed averaging, the scripts' chain, and DePT around every prompt type."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
import train
from test_vpt import block_inputs, reference_image_features, vit_b16_shapes
from trainers.analysis import avg_ckpt
from trainers.engine.checkpoint import CheckpointMismatchError
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer
from trainers.engine.trainer import Batch
from trainers.mvlpt import MCoOp, MUPT, MVPT, UnifiedPromptedCLIP, set_activation_checkpointing
from trainers.prompts.unified import MultitaskVLPromptLearner, UnifiedPromptProjection
from trainers.prompts.vision import VisualPromptLearner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["red square", "blue circle", "green_triangle"]
TWO_TASKS = ["--dataset", "Synthetic,SyntheticB", "--multi-task"]


def tiny():
    model, _ = clip.load("tiny-ViT-B/16", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def images(n=2, seed=0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def original_theta(theta, u):
    """MVLPT's theta call written out: CLIP's sequence-first block on U shaped (1, T, width), so
    nn.MultiheadAttention sees T sequences of length 1."""
    block = theta.resblocks[0]
    mha = nn.MultiheadAttention(u.shape[-1], 1)
    mha.load_state_dict({"in_proj_weight": block.attn.in_proj_weight, "in_proj_bias": block.attn.in_proj_bias,
                         "out_proj.weight": block.attn.out_proj.weight, "out_proj.bias": block.attn.out_proj.bias})
    h = block.ln_1(u)
    x = u + mha(h, h, h, need_weights=False)[0]
    return x + block.mlp(block.ln_2(x))


# ----- UPT -------------------------------------------------------------------------------------------

def test_upt_per_token_mode_is_the_original_codes_theta():
    torch.manual_seed(0)
    projection = UnifiedPromptProjection(64, 96, width=128)
    ctx, visual = torch.randn(4, 64), torch.randn(3, 2, 96)
    with torch.no_grad():
        text_out, visual_out = projection(ctx, visual)
        u = torch.cat([projection.text_in(ctx), projection.vision_in(visual.reshape(-1, 96))]).unsqueeze(0)
        expected = original_theta(projection.theta, u)[0]
    assert torch.allclose(text_out, projection.text_out(expected[:4]), atol=1e-5)
    assert torch.allclose(visual_out, projection.vision_out(expected[4:]).reshape(3, 2, 96), atol=1e-5)


@pytest.mark.parametrize("attention,mixes", [("per_token", False), ("across_tokens", True)])
def test_only_the_papers_mode_lets_prompt_tokens_attend_to_each_other(attention, mixes):
    torch.manual_seed(0)
    projection = UnifiedPromptProjection(64, 96, width=128, attention=attention)
    ctx, visual = torch.randn(4, 64), torch.randn(3, 2, 96)
    changed = ctx.clone()
    changed[0] += 1.0
    with torch.no_grad():
        _, before = projection(ctx, visual)
        _, after = projection(changed, visual)
    assert (not torch.allclose(before, after, atol=1e-6)) == mixes


def test_upt_learns_566400_parameters_at_vit_b16_widths():
    """The paper's 0.45%: ctx 4 x 512, visual 12 x 4 x 768, theta and four projections."""
    visual = VisualPromptLearner(vit_b16_shapes(), 4)
    projection = UnifiedPromptProjection(512, 768, width=128)
    count = 4 * 512 + sum(p.numel() for p in visual.parameters()) + sum(p.numel() for p in projection.parameters())
    assert count == 566_400


def test_upt_feeds_every_block_its_own_transformed_prompts_when_text_and_visual_lengths_differ(tiny_clip):
    torch.manual_seed(0)
    vision = VisualPromptLearner(tiny_clip, 3)
    learner = MultitaskVLPromptLearner(tiny_clip, NAMES, 2, vision)
    model = UnifiedPromptedCLIP(tiny_clip, learner)
    with torch.no_grad():
        text_ctx, visual = learner.prompts()
        seen = block_inputs(tiny_clip, lambda: model.image_features(images()))
    assert text_ctx.shape == (2, 64) and visual.shape == (tiny_clip.visual.transformer.layers, 3, 128)
    for i in range(1, len(seen)):
        assert torch.equal(seen[i][:, 1:4], visual[i].expand(2, -1, -1))
    assert all(x.shape[1] == seen[0].shape[1] for x in seen)


def test_visual_only_runs_use_the_fixed_prompt_encoded_once(tiny_clip):
    learner = MultitaskVLPromptLearner(tiny_clip, NAMES, 0, VisualPromptLearner(tiny_clip, 2))
    model = UnifiedPromptedCLIP(tiny_clip, learner)
    first = model.class_text_features()
    expected = tiny_clip.encode_text(clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
    assert torch.allclose(first, expected, atol=1e-5) and model.class_text_features() is first
    assert set(learner.checkpoint_view().state_dict()) == {"vpt_embeddings", "vpt_embeddings_deep"}


def test_a_prompt_learner_needs_some_prompt(tiny_clip):
    with pytest.raises(ValueError, match="N_CTX"):
        MultitaskVLPromptLearner(tiny_clip, NAMES, 0, None)


# ----- activation checkpointing ---------------------------------------------------------------------

def upt_gradients(segments):
    torch.manual_seed(0)
    model = tiny()
    assert set_activation_checkpointing(model, segments) == (segments > 1)
    learner = MultitaskVLPromptLearner(model, NAMES, 2, VisualPromptLearner(model, 2))
    calls = {"visual": 0, "text": 0}
    for name, tower in (("visual", model.visual.transformer), ("text", model.transformer)):
        tower.resblocks[-1].ln_1.register_forward_hook(lambda *_, name=name: calls.update({name: calls[name] + 1}))
    logits = UnifiedPromptedCLIP(model, learner)(images())
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    return [p.grad.clone() for p in learner.parameters()], calls


def test_act_ckpt_recomputes_blocks_of_both_encoders_in_backward_with_the_same_gradients():
    plain, plain_calls = upt_gradients(1)
    checkpointed, recomputed_calls = upt_gradients(2)
    assert plain_calls == {"visual": 1, "text": 1} and recomputed_calls == {"visual": 2, "text": 2}
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


# ----- command line, YAMLs, readable names -----------------------------------------------------------

def cfg_from(*argv):
    return train.setup_cfg(train.build_parser().parse_args(list(argv)))


def test_mvlpts_arguments_set_its_keys_and_order_the_tasks():
    cfg = cfg_from("--dataset", "SyntheticB,Synthetic", "--multi-task", "--shots", "5", "--seed", "2",
                   "--multi-task-label_pertask", "--multi-task-evalkey", "Synthetic", "--cut-contextlen",
                   "--act-ckpt", "3")
    data = cfg.DATASET
    assert data.NAME == data.DATASET == "SyntheticB,Synthetic"  # the data manager sorts ELEVATER tasks only
    assert (data.NUM_SHOTS, data.NUM_SAMPLES_PER_CLASS, data.RANDOM_SEED_SAMPLING) == (5, 5, 2)
    assert data.MULTITASK and data.MULTITASK_LABEL_PERTASK and data.MULTITASK_EVALKEY == "Synthetic"
    assert cfg.TRAINER.CUT_CONTEXTLEN and cfg.TRAINER.ACT_CKPT == 3
    defaults = cfg_from()
    assert defaults.DATASET.MULTITASK_EVALKEY == "average" and defaults.TRAINER.ACT_CKPT == 1
    assert defaults.TRAINER.MVLPT.COOP.CLASS_TOKEN_POSITION == "middle" and defaults.TRAINER.MVLPT.PREC == "fp16"


def test_mvlpts_yamls_load_unchanged():
    folder = os.path.join(REPO, "configs", "trainers", "MVLPT")
    shared = "/work/shared/peer-configs/MVLPT/configs/trainers/MVLPT"
    for name in sorted(os.listdir(folder)):
        cfg = cfg_from("--trainer", "MVLPT", "--config-file", os.path.join(folder, name))
        assert cfg.MODEL.BACKBONE.NAME and cfg.INPUT.SIZE[0] in (224, 336)
        if os.path.isdir(shared) and not name.startswith("tiny"):
            assert open(os.path.join(folder, name)).read() == open(os.path.join(shared, name)).read()


def test_readable_names_fix_the_prompt_type_and_default_to_the_papers_lengths():
    cfg = cfg_from()
    assert (MCoOp.context_lengths(cfg), MVPT.context_lengths(cfg), MUPT.context_lengths(cfg)) == \
        ((16, 0), (0, 16), (4, 4))
    assert TRAINER_REGISTRY.get("UPT") is MUPT
    with pytest.raises(ValueError, match="MCoOp learns no visual prompt"):
        MCoOp.context_lengths(cfg_from("TRAINER.MVLPT.VPT.N_CTX", "4"))


# ----- a two-task MUPT trainer: loss, selection, loading ------------------------------------------------

@pytest.fixture(scope="module")
def mupt(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mupt")
    cfg = cfg_from("--root", data_root, "--output-dir", str(out), "--trainer", "MUPT", "--config-file",
                   "configs/trainers/MUPT/tiny_vit_b16_ep2.yaml", *TWO_TASKS, "--shots", "1")
    return build_trainer(cfg)


def with_options(trainer, **options):
    cfg = trainer.cfg
    cfg.defrost()
    for key, value in options.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    cfg.freeze()


def test_the_multi_task_loss_is_a_softmax_over_all_tasks_classes_unless_per_task(mupt):
    sizes = [t.num_classes for t in mupt.dm.tasks]
    logits = torch.randn(2, sum(sizes), generator=torch.Generator().manual_seed(0))
    labels, tasks = torch.tensor([1, sizes[0] + 2]), torch.tensor([0, 1])
    batch = Batch(None, labels, tasks)
    assert torch.allclose(mupt.classification_loss(logits, batch), F.cross_entropy(logits, labels))
    with_options(mupt, **{"DATASET.MULTITASK_LABEL_PERTASK": True})
    try:
        per_task = [F.cross_entropy(logits[0:1, :sizes[0]], labels[0:1]),
                    F.cross_entropy(logits[1:2, sizes[0]:], labels[1:2] - sizes[0])]
        assert torch.allclose(mupt.classification_loss(logits, batch), sum(per_task) / 2)
    finally:
        with_options(mupt, **{"DATASET.MULTITASK_LABEL_PERTASK": False})


def test_multi_hot_targets_train_with_the_originals_soft_target_cross_entropy(mupt):
    sizes = [t.num_classes for t in mupt.dm.tasks]
    logits = torch.randn(3, sum(sizes), generator=torch.Generator().manual_seed(1))
    targets = torch.zeros(3, sum(sizes))
    targets[0, [1, 4]] = 1  # a multi-label image of task 0
    targets[1, sizes[0] + 2] = 1
    targets[2, 3] = 1
    batch = Batch(None, targets.argmax(dim=1), torch.tensor([0, 1, 0]), targets)
    original = F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True))  # MVLPT's normalised labels
    assert torch.allclose(mupt.classification_loss(logits, batch), original)
    with_options(mupt, **{"DATASET.MULTITASK_LABEL_PERTASK": True})
    try:
        rows = [F.cross_entropy(logits[0:1, :sizes[0]], torch.tensor([[0, .5, 0, 0, .5] + [0] * (sizes[0] - 5)])),
                F.cross_entropy(logits[1:2, sizes[0]:], torch.tensor([2])),
                F.cross_entropy(logits[2:3, :sizes[0]], torch.tensor([3]))]
        assert torch.allclose(mupt.classification_loss(logits, batch), sum(rows) / 3)
    finally:
        with_options(mupt, **{"DATASET.MULTITASK_LABEL_PERTASK": False})


def test_model_selection_uses_the_mean_or_the_evalkey_task(mupt):
    results = {"accuracy": 50.0, "error_rate": 50.0, "Synthetic/accuracy": 40.0, "SyntheticB/accuracy": 60.0}
    assert mupt.selection_score(results) == 50.0
    with_options(mupt, **{"DATASET.MULTITASK_EVALKEY": "SyntheticB"})
    try:
        assert mupt.selection_score(results) == 60.0
    finally:
        with_options(mupt, **{"DATASET.MULTITASK_EVALKEY": "average"})


def source_state(trainer):
    return {k: v.clone() for k, v in trainer._models["prompt_learner"].state_dict().items()}


def test_source_prompts_load_with_class_buffers_dropped_and_every_tensor_checked(mupt):
    source = source_state(mupt)
    source["ctx"] = source["ctx"] + 1.0
    source["token_prefix"] = torch.zeros(99, 1, 64)  # another run's classes: rebuilt, never loaded
    source["token_suffix"] = torch.zeros(99, 70, 64)
    mupt.load_learned_weights("prompt_learner", source, "source run")
    assert torch.equal(mupt.model.prompt_learner.text.ctx, source["ctx"])

    missing = {k: v for k, v in source.items() if k != "vpt_embeddings_deep"}
    with pytest.raises(CheckpointMismatchError, match="vpt_embeddings_deep.*VPT.N_CTX 2"):
        mupt.load_learned_weights("prompt_learner", missing, "source run")
    wrong = dict(source, ctx=torch.zeros(4, 64))
    with pytest.raises(Exception, match=r"ctx.*\(4, 64\)|ctx.*4, 64"):
        mupt.load_learned_weights("prompt_learner", wrong, "source run")


def original_layout_checkpoint(trainer, seed=5):
    """A checkpoint as MVLPT writes it for UPT (released files call theta ``upt_proj``)."""
    g = torch.Generator().manual_seed(seed)
    ours = source_state(trainer)
    state = {k.replace("mvlpt_proj", "upt_proj"): 0.3 * torch.randn(v.shape, generator=g) for k, v in ours.items()}
    n_cls = len(trainer.classnames)
    state["token_prefix"] = torch.randn(n_cls, 1, 64, generator=g)
    state["token_suffix"] = torch.randn(n_cls, 74, 64, generator=g)
    return state


def written_out_logits(trainer, state, x):
    """MVLPT's forward from the spec: U through theta (sequence-first), text "middle" prompts, VPT-deep."""
    model = trainer.model.clip
    pre, post = nn.Linear(64, 128), nn.Linear(128, 64)
    pre.load_state_dict({"weight": state["upt_proj_ctx_coop_pre.weight"], "bias": state["upt_proj_ctx_coop_pre.bias"]})
    post.load_state_dict({"weight": state["upt_proj_ctx_coop_post.weight"],
                          "bias": state["upt_proj_ctx_coop_post.bias"]})
    theta = trainer.model.prompt_learner.projection.theta
    visual = torch.cat([state["vpt_embeddings"], state["vpt_embeddings_deep"]])
    u = torch.cat([pre(state["ctx"]), visual.reshape(-1, 128)]).unsqueeze(0)
    u = original_theta(theta, u)[0]
    ctx, visual = post(u[:2]), u[2:].reshape(visual.shape)
    tokenizer_names = [c.replace("_", " ") for c in trainer.classnames]
    tokens = clip.tokenize([f"X X {c}." for c in tokenizer_names])
    embedded = model.token_embedding(tokens)
    rows = []
    for i, name in enumerate(tokenizer_names):
        n = len(clip.tokenizer.get_tokenizer().encode(name))
        rows.append(torch.cat([embedded[i, :1], ctx[:1], embedded[i, 3:3 + n], ctx[1:], embedded[i, 3 + n:]]))
    text = model.encode_text_embeddings(torch.stack(rows), tokens.argmax(dim=-1))
    image = reference_image_features(model, x, list(visual), before_ln_pre=False)
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.t()


def test_an_original_upt_checkpoint_evaluates_to_the_written_out_logits(mupt, tmp_path, run_train, data_root):
    state = original_layout_checkpoint(mupt)
    folder = tmp_path / "original" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 3, "optimizer": None, "scheduler": None, "val_result": 1.0},
               folder / "model.pth.tar-3")
    mupt.load_model(str(tmp_path / "original"), epoch=3)
    mupt.model.eval()
    x = images()
    with torch.no_grad():
        assert torch.allclose(mupt.model(x), written_out_logits(mupt, state, x), atol=1e-4)

    code, log = run_train("--root", data_root, "--trainer", "MUPT", "--config-file",
                          "configs/trainers/MUPT/tiny_vit_b16_ep2.yaml", *TWO_TASKS, "--shots", "1", "--eval-only",
                          "--model-dir", str(tmp_path / "original"), "--load-epoch", "3",
                          output_dir=str(tmp_path / "e"))
    assert code == 0 and "=> task: SyntheticB" in log and "* accuracy:" in log


def test_a_resumed_elevater_run_continues_the_toolkits_shuffle(tmp_path):
    from datasets.synthetic_elevater import write_elevater_task
    write_elevater_task(str(tmp_path / "data"), "cifar-10")
    args = ("--root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), "--trainer", "MVPT",
            "--config-file", "configs/trainers/MVPT/tiny_vit_b16_ep2.yaml", "--dataset", "cifar-10", "--shots", "2")
    first = build_trainer(cfg_from(*args))
    first.before_train()
    assert first.start_epoch == 0
    epochs = [list(first.train_loader_x.sampler) for _ in range(2)]
    assert epochs[0] != epochs[1]
    first.save_model(0, str(tmp_path / "run"))
    resumed = build_trainer(cfg_from(*args))
    resumed.before_train()
    assert resumed.start_epoch == 1 and list(resumed.train_loader_x.sampler) == epochs[1]


def test_avg_ckpt_averages_tensors_epoch_and_val_result(tmp_path):
    for seed, value in ((1, 1.0), (2, 2.0), (3, 6.0)):
        folder = tmp_path / f"seed{seed}" / "prompt_learner"
        folder.mkdir(parents=True)
        torch.save({"state_dict": {"ctx": torch.full((2, 3), value)}, "epoch": seed + 1, "val_result": value * 10},
                   folder / "model-best.pth.tar")
    assert avg_ckpt.main([str(tmp_path)]) == 0
    averaged = torch.load(tmp_path / "prompt_learner" / "model-best.pth.tar", weights_only=False)
    assert torch.equal(averaged["state_dict"]["ctx"], torch.full((2, 3), 3.0))
    assert averaged["epoch"] == 3 and averaged["val_result"] == 30.0 and averaged["optimizer"] is None
    assert (tmp_path / "prompt_learner" / "model.pth.tar-3").is_file()
    assert avg_ckpt.main([str(tmp_path), "--seeds", "1", "4"]) == 1  # a missing seed is an error


# ----- end to end ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["MCoOp", "MVPT", "MUPT"])
def test_two_task_training_keeps_the_best_epoch_of_every_task(name, run_train, data_root, tmp_path):
    code, log = run_train("--root", data_root, "--seed", "1", "--trainer", name, "--config-file",
                          f"configs/trainers/{name}/tiny_vit_b16_ep2.yaml", *TWO_TASKS, "--shots", "1",
                          "--multi-task-evalkey", "SyntheticB", "TEST.FINAL_MODEL", "best_val",
                          "TRAINER.MVLPT.SAVE_BEST_PER_TASK", "True", "OPTIM.MAX_EPOCH", "1",
                          output_dir=str(tmp_path))
    assert code == 0 and "=> task: Synthetic" in log and "=> task: SyntheticB" in log
    for task in ("Synthetic", "SyntheticB"):
        assert (tmp_path / "best_per_task" / task / "prompt_learner" / "model-best.pth.tar").is_file()
    assert (tmp_path / "prompt_learner" / "model-best.pth.tar").is_file()


@pytest.mark.parametrize("text_n,visual_n", [(4, 0), (0, 4), (2, 2)])
def test_dept_wraps_every_prompt_type_on_two_tasks(text_n, visual_n, run_train, data_root, tmp_path):
    code, log = run_train("--root", data_root, "--seed", "1", "--trainer", "ExtrasLinearProbeMVLPT", "--config-file",
                          "configs/trainers/MVLPT/tiny_vit_b16_ep2.yaml", *TWO_TASKS, "--shots", "1",
                          "TRAINER.MVLPT.COOP.N_CTX", str(text_n), "TRAINER.MVLPT.VPT.N_CTX", str(visual_n),
                          "TRAINER.LINEAR_PROBE.ROUTE", "base", "OPTIM.MAX_EPOCH", "1", output_dir=str(tmp_path))
    assert code == 0 and "=> task: SyntheticB" in log
    saved = torch.load(tmp_path / "PromptLearner" / "model.pth.tar-1", weights_only=False)["state_dict"]
    assert any(k.startswith("linear_probe") for k in saved) and any(k.startswith("prompt_learner.") for k in saved)


def test_the_cross_task_script_chains_source_average_and_target(tmp_path, data_root, isolated_clip_cache):
    for name in ("configs", "scripts", "train.py", "trainers", "clip", "datasets"):
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    env = dict(os.environ, DATA=data_root, SEEDS="1", PYTHON=sys.executable, PYTHONPATH=REPO,
               VLPROMPT_CLIP_CACHE=isolated_clip_cache, SOURCE_TASKS="Synthetic,SyntheticB",
               TARGET_TASKS="SyntheticB", EXTRA_OPTS="OPTIM.MAX_EPOCH 1")
    run = subprocess.run(["bash", "scripts/mvlpt/cross_task.sh", "UPT", "tiny_vit_b16_ep2", "2", "1"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    setting = "UPT/tiny_vit_b16_ep2_1shots/nctx2"
    source = tmp_path / "output/mvlpt/source/Synthetic,SyntheticB" / setting
    assert (source / "prompt_learner" / "model-best.pth.tar").is_file()  # the seeds' average
    target_log = (tmp_path / "output/mvlpt/target/SyntheticB" / setting / "seed1" / "log.txt").read_text()
    relative_source = source.relative_to(tmp_path)
    assert f'Loading weights to prompt_learner from "{relative_source}/prompt_learner/model-best.pth.tar"' in target_log
    assert "* accuracy:" in target_log
