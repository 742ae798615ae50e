"""CoCoOp: batched text encoding equals the original per-image loop, checkpoints in the original layout
load, and a base-to-new run works end to end (tiny CLIP, Synthetic data, fp32 on the CPU)."""
from __future__ import annotations

import glob
import os
import re
from collections import OrderedDict

import pytest
import torch

import clip
import train
from clip.loading import load_state_dict as load_clip_state_dict
from trainers.cocoop import ConditionalPromptedCLIP
from trainers.engine.checkpoint import load_checkpoint
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer
from trainers.prompts.conditional import ConditionalContextLearner

TINY_CFG = "configs/trainers/CoCoOp/tiny_vit_b16_c4_ep2_batch4.yaml"
# different token counts, so a prompt paired with the wrong end-of-text position gives other features
CLASSNAMES = ["cat", "blue_circle", "green triangle", "a rather long yellow diamond", "purple cross", "x"]
ORIGINAL_KEYS = ["ctx", "token_prefix", "token_suffix", "meta_net.linear1.weight", "meta_net.linear1.bias",
                 "meta_net.linear2.weight", "meta_net.linear2.bias"]


def tiny_model(images_per_text_call: int = 0, seed: int = 0) -> ConditionalPromptedCLIP:
    clip_model, _ = clip.load("tiny-ViT-B/16", device="cpu")
    clip_model.float()
    torch.manual_seed(seed)
    learner = ConditionalContextLearner(clip_model, CLASSNAMES, n_ctx=4)
    with torch.no_grad():  # a meta-net bias large enough that a wrong image/prompt pairing shows
        learner.meta_net.linear2.weight.normal_(std=0.5)
    return ConditionalPromptedCLIP(clip_model, learner, images_per_text_call=images_per_text_call).eval()


def per_image_loop_logits(model: ConditionalPromptedCLIP, images: torch.Tensor) -> torch.Tensor:
    """The original CoCoOp forward, written out: one text-encoder call per image."""
    learner, clip_model = model.prompt_learner, model.clip
    feats = clip_model.encode_image(images)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    bias = learner.meta_net(feats)
    rows = []
    for f_i, b_i in zip(feats, bias):
        ctx_i = (learner.ctx + b_i).unsqueeze(0).expand(learner.n_cls, -1, -1)
        prompts = torch.cat([learner.token_prefix, ctx_i, learner.token_suffix], dim=1)
        text = clip_model.encode_text_embeddings(prompts, learner.tokenized_prompts.argmax(dim=-1))
        text = text / text.norm(dim=-1, keepdim=True)
        rows.append(clip_model.logit_scale.exp() * f_i @ text.t())
    return torch.stack(rows)


def trainable_grads(model: ConditionalPromptedCLIP) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((n, p.grad.clone()) for n, p in model.prompt_learner.named_parameters())


@pytest.mark.parametrize("images_per_call", [0, 1, 2])
def test_batched_logits_and_gradients_equal_the_per_image_loop(images_per_call):
    model = tiny_model(images_per_call)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(3, len(CLASSNAMES), generator=torch.Generator().manual_seed(2))

    expected = per_image_loop_logits(model, images)
    (expected * weights).sum().backward()
    expected_grads = trainable_grads(model)
    model.zero_grad()
    logits = model(images)
    (logits * weights).sum().backward()

    assert logits.shape == (3, len(CLASSNAMES))
    assert not torch.allclose(logits[0], logits[1], atol=1e-2)  # images really get different prompts
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    grads = trainable_grads(model)
    assert list(grads) == ["ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                           "meta_net.linear2.weight", "meta_net.linear2.bias"]
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_text_features_are_per_image_and_chunking_does_not_change_them():
    model = tiny_model()
    images = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        image_features, text_features = model.encode(images)
        whole = model(images)
        model.images_per_text_call = 2  # chunks of 2, 2, 1 images
        _, chunked_text = model.encode(images)
        chunked = model(images)
    assert image_features.shape == (5, 64) and text_features.shape == (5, len(CLASSNAMES), 64)
    torch.testing.assert_close(chunked_text, text_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_state_dict_has_the_original_keys_shapes_and_order():
    model = tiny_model()
    state = model.prompt_learner.state_dict()
    assert list(state) == ORIGINAL_KEYS
    n_ctx, width, vis_dim = 4, 64, 64
    assert state["ctx"].shape == (n_ctx, width)
    assert state["meta_net.linear1.weight"].shape == (vis_dim // 16, vis_dim)
    assert state["meta_net.linear2.weight"].shape == (width, vis_dim // 16)
    assert state["token_prefix"].shape == (len(CLASSNAMES), 1, width)
    assert state["token_suffix"].shape == (len(CLASSNAMES), 77 - 1 - n_ctx, width)


def test_meta_net_is_fp16_exactly_when_clip_is():
    clip_model = clip.build_model(load_clip_state_dict("tiny-ViT-B/16"))  # the released fp16 layout
    learner = ConditionalContextLearner(clip_model, CLASSNAMES, n_ctx=4)
    assert {p.dtype for p in learner.parameters()} == {torch.float16}
    learner = ConditionalContextLearner(clip_model.float(), CLASSNAMES, n_ctx=4)
    assert {p.dtype for p in learner.parameters()} == {torch.float32}


@pytest.mark.parametrize("name,n_ctx,ctx_init", [("vit_b16_c4_ep10_batch1", 4, ""), ("vit_b16_c8_ep10_batch1", 8, ""),
                                                 ("vit_b16_c16_ep10_batch1", 16, ""),
                                                 ("vit_b16_c4_ep10_batch1_ctxv1", 4, "a photo of a")])
def test_original_configs_load(name, n_ctx, ctx_init):
    cfg = setup(["--trainer", "CoCoOp", "--config-file", f"configs/trainers/CoCoOp/{name}.yaml"])
    opts = cfg.TRAINER.COCOOP
    assert (opts.N_CTX, opts.CTX_INIT, opts.PREC, opts.TEXT_CHUNK) == (n_ctx, ctx_init, "fp16", 8)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH) == (1, 0.002, 10)
    assert TRAINER_REGISTRY.get("CoCoOp").__name__ == "CoCoOp"


def setup(argv):
    return train.setup_cfg(train.build_parser().parse_args(argv))


def build(data_root, *opts, dataset="synthetic", seed=1):
    cfg = setup(["--root", data_root, "--seed", str(seed), "--trainer", "CoCoOp", "--dataset-config-file",
                 f"configs/datasets/{dataset}.yaml", "--config-file", TINY_CFG, "DATASET.NUM_SHOTS", "4", *opts])
    train.set_random_seed(seed)
    return build_trainer(cfg)


def test_negative_text_chunk_is_rejected(data_root):
    with pytest.raises(ValueError, match="TRAINER.COCOOP.TEXT_CHUNK"):
        build(data_root, "TRAINER.COCOOP.TEXT_CHUNK", "-1")


def epoch_losses(log: str):
    """Average loss at the last logged batch of each epoch."""
    last = {}
    for epoch, avg in re.findall(r"epoch \[(\d+)/\d+\] batch \[\d+/\d+\] .* loss [\d.]+ \(([\d.]+)\)", log):
        last[int(epoch)] = float(avg)
    return [last[e] for e in sorted(last)]


@pytest.fixture(scope="module")
def base_run(data_root, tmp_path_factory):
    """Train on the base classes of Synthetic with batch 4 (the text encoder sees 4 x 5 sequences per call)."""
    out = str(tmp_path_factory.mktemp("cocoop") / "base")
    return out, _run(["--root", data_root, "--seed", "1", "--trainer", "CoCoOp",
                      "--dataset-config-file", "configs/datasets/synthetic.yaml", "--config-file", TINY_CFG,
                      "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "3"], out)


def _run(argv, output_dir):
    from trainers.engine.logger import close_logger
    try:
        code = train.main(["--output-dir", output_dir] + argv)
    finally:
        close_logger()
    assert code == 0
    logs = sorted(glob.glob(os.path.join(output_dir, "log.txt*")))
    return open(logs[-1]).read()


@pytest.mark.slow
def test_base_to_new_end_to_end(base_run, data_root, tmp_path):
    out, log = base_run
    losses = epoch_losses(log)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert " acc " not in log  # CoCoOp logs the loss only
    assert "* accuracy:" in log and "Finish training" in log
    assert os.path.isfile(os.path.join(out, "prompt_learner", "model.pth.tar-3"))

    new_log = _run(["--root", data_root, "--seed", "1", "--trainer", "CoCoOp",
                    "--dataset-config-file", "configs/datasets/synthetic.yaml", "--config-file", TINY_CFG,
                    "--model-dir", out, "--load-epoch", "3", "--eval-only",
                    "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new"], str(tmp_path / "new"))
    assert f'Loading weights to prompt_learner from "{out}/prompt_learner/model.pth.tar-3" (epoch = 3)' in new_log
    assert re.search(r"\* total: 40\n\* correct: \d+\n\* accuracy: [\d.]+%", new_log)
    assert os.path.isfile(tmp_path / "new" / "results.json")


@pytest.mark.slow
def test_checkpoint_of_other_classes_loads(base_run, data_root):
    """Base classes of Synthetic (5) -> new classes of SyntheticB (3): the class-dependent buffers are dropped."""
    out, _ = base_run
    trainer = build(data_root, "DATASET.SUBSAMPLE_CLASSES", "new", dataset="synthetic_b", seed=2)
    trainer.load_model(out, epoch=3)
    saved = load_checkpoint(os.path.join(out, "prompt_learner", "model.pth.tar-3"))["state_dict"]
    assert list(saved) == ORIGINAL_KEYS and saved["token_prefix"].shape[0] == 5
    state = trainer.model.prompt_learner.state_dict()
    assert state["token_prefix"].shape[0] == 3
    for key in ORIGINAL_KEYS[3:] + ["ctx"]:
        torch.testing.assert_close(state[key], saved[key])
    assert trainer.test() >= 0


def test_original_layout_checkpoint_loads_and_reproduces_logits(data_root, tmp_path):
    """A file as CoCoOp + Dassl wrote it: fp16 tensors, other classes' token buffers, a pickled scheduler."""
    source = build(data_root, "DATASET.SUBSAMPLE_CLASSES", "base", seed=1)
    learner = source.model.prompt_learner
    with torch.no_grad():
        for p in learner.parameters():  # trained-looking values that survive the fp16 round trip
            p.copy_((p + 0.1 * torch.randn_like(p)).half().float())
    state = OrderedDict((k, v.half()) for k, v in learner.state_dict().items())
    state["token_prefix"] = torch.randn(7, 1, 64).half()
    state["token_suffix"] = torch.randn(7, 72, 64).half()
    optim = torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=10)
    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    torch.save({"state_dict": state, "epoch": 10, "optimizer": optim.state_dict(),
                "scheduler": {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": 10},
                "val_result": None}, folder / "model.pth.tar-10")
    (folder / "checkpoint").write_text("model.pth.tar-10\n")

    target = build(data_root, "DATASET.SUBSAMPLE_CLASSES", "base", seed=2)
    assert not torch.equal(target.model.prompt_learner.ctx, learner.ctx)
    target.load_model(str(tmp_path), epoch=10)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    source.set_model_mode("eval")
    target.set_model_mode("eval")
    with torch.no_grad():
        torch.testing.assert_close(target.model(images), source.model(images))
