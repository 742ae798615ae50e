"""KgCoOp: the knowledge-guided term against independently computed template anchors, W = 0 is CoOp,
its YAMLs and original checkpoints load, and a base-to-new run works (tiny CLIP, Synthetic, fp32)."""
from __future__ import annotations

import glob
import os
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import clip
import train
from datasets import DATASET_REGISTRY
from trainers.engine.checkpoint import load_checkpoint
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer
from trainers.kgcoop import kgcoop_ctx_init, kgcoop_template

TINY_CFG = "configs/trainers/KgCoOp/tiny_vit_b16_ep2_ctxv1.yaml"

#: KgCoOp's hand-crafted templates (its CUSTOM_TEMPLATES table), by registered data set name
KGCOOP_TABLE = {
    "OxfordPets": "a photo of a {}, a type of pet.", "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.", "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.", "SUN397": "a photo of a {}.", "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.", "ImageNet": "a photo of a {}.", "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.", "ImageNetA": "a photo of a {}.", "ImageNetR": "a photo of a {}.",
}


def setup(argv):
    return train.setup_cfg(train.build_parser().parse_args(argv))


def build(data_root, *opts, trainer="KgCoOp", config=TINY_CFG, seed=1, dataset="synthetic"):
    cfg = setup(["--root", data_root, "--seed", str(seed), "--trainer", trainer, "--dataset-config-file",
                 f"configs/datasets/{dataset}.yaml", "--config-file", config, "DATASET.NUM_SHOTS", "4",
                 "DATASET.SUBSAMPLE_CLASSES", "base", *opts])
    train.set_random_seed(seed)
    return build_trainer(cfg)


def a_batch(trainer):
    batch = next(iter(trainer.train_loader_x))
    return batch["img"], batch["label"]


def independent_anchors(clip_model, classnames, template):
    with torch.no_grad():
        feats = clip_model.encode_text(clip.tokenize([template.format(c.replace("_", " ")) for c in classnames]))
    return feats / feats.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_kg_term_against_independent_template_anchors(data_root, distance):
    trainer = build(data_root, "TRAINER.COOP.KG_DISTANCE", distance, "TRAINER.COOP.W", "8.0")
    model = trainer.model
    anchors = independent_anchors(model.clip, trainer.dm.dataset.classnames, "a photo of a {}.")
    torch.testing.assert_close(model.anchor_text_features, anchors)

    with torch.no_grad():  # move ctx away from its init so the term is far from 0
        model.prompt_learner.ctx.add_(0.5 * torch.randn_like(model.prompt_learner.ctx))
    learned = model.class_text_features()
    learned = learned / learned.norm(dim=-1, keepdim=True)
    if distance == "cosine":
        expected = 1.0 - (learned * anchors).sum(dim=-1).mean()
    else:
        expected = ((learned - anchors) ** 2).sum(dim=-1).mean()
    assert expected > 1e-3
    images, labels = a_batch(trainer)
    loss, logits = trainer.compute_loss(images, labels)
    torch.testing.assert_close(trainer.knowledge_guided_loss(model.class_text_features()), expected)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels) + 8.0 * expected)


def test_each_task_anchors_use_its_own_template(data_root):
    trainer = build(data_root, "DATASET.NAME", "Synthetic,SyntheticB", "DATASET.SUBSAMPLE_CLASSES", "all")
    first, second = trainer.dm.tasks
    expected = torch.cat([independent_anchors(trainer.model.clip, first.classnames, "a photo of a {}."),
                          independent_anchors(trainer.model.clip, second.classnames, "{} texture.")])
    torch.testing.assert_close(trainer.model.anchor_text_features, expected)


def test_w_zero_is_coop(data_root):
    """Same seed, same random ctx: KgCoOp with W 0 has CoOp's loss, logits and gradient."""
    opts = ("TRAINER.COOP.CTX_INIT", "False", "TRAINER.COOP.N_CTX", "4")
    coop = build(data_root, *opts, trainer="CoOp")
    kg = build(data_root, *opts, "TRAINER.COOP.W", "0.0")
    torch.testing.assert_close(kg.model.prompt_learner.ctx, coop.model.prompt_learner.ctx, rtol=0, atol=0)
    images, labels = a_batch(coop)
    results = []
    for trainer in (coop, kg):
        loss, logits = trainer.compute_loss(images, labels)
        loss.backward()
        results.append((loss, logits, trainer.model.prompt_learner.ctx.grad))
    for ours, coops in zip(results[1], results[0]):
        torch.testing.assert_close(ours, coops)
    loss_w, _ = build(data_root, *opts, "TRAINER.COOP.W", "8.0").compute_loss(images, labels)
    assert loss_w > results[0][0] + 1e-4


def test_only_ctx_trains_and_anchors_are_not_checkpointed(data_root):
    trainer = build(data_root)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert "anchor_text_features" not in trainer.model.state_dict()
    assert list(trainer.model.prompt_learner.state_dict()) == ["ctx", "token_prefix", "token_suffix"]
    assert TRAINER_REGISTRY.get("KgCoOp").__name__ == "KgCoOp"


def test_kgcoop_templates_follow_its_table():
    """The data sets' own (CoOp) templates, with KgCoOp's texture template for DTD."""
    for name, template in KGCOOP_TABLE.items():
        assert kgcoop_template(name, DATASET_REGISTRY.get(name).template) == template, name
    assert kgcoop_template("Synthetic", "a photo of a {}.") == "a photo of a {}."


def test_ctx_init_true_and_any_string_mean_a_photo_of_a(data_root, capsys):
    cfg = setup(["--trainer", "KgCoOp", "--config-file", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"])
    assert cfg.TRAINER.COOP.CTX_INIT is True and cfg.TRAINER.COOP.W == 1.0
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.MAX_EPOCH, cfg.TRAIN.PRINT_FREQ) == (128, 100, 5)
    dept = setup(["--trainer", "KgCoOp", "--config-file", "configs/trainers/KgCoOp/vit_b16_ep10_ctxv1_bs4_lr35.yaml"])
    assert (dept.TRAINER.COOP.CTX_INIT, dept.TRAINER.COOP.W, dept.TRAINER.COOP.ALPHA) == ("a photo of a", 2.0, 1.0)
    assert setup(["--config-file", "configs/trainers/KgCoOp/rn50_ep100.yaml"]).MODEL.BACKBONE.NAME == "RN50"

    assert kgcoop_ctx_init(True) == kgcoop_ctx_init("a photo of a") == "a photo of a"
    assert kgcoop_ctx_init(False) == kgcoop_ctx_init("") == ""
    assert kgcoop_ctx_init("a picture of the") == "a photo of a"
    assert "KG_CTX_INIT_VERBATIM" in capsys.readouterr().out
    assert kgcoop_ctx_init("a picture of the", verbatim=True) == "a picture of the"

    trainer = build(data_root, "TRAINER.COOP.N_CTX", "16")  # the tiny YAML says CTX_INIT: True
    clip_model = trainer.model.clip
    with torch.no_grad():
        words = clip_model.token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    torch.testing.assert_close(trainer.model.prompt_learner.ctx, words)
    assert 'Initial context: "a photo of a"' in capsys.readouterr().out


def test_original_kgcoop_checkpoint_loads(data_root, tmp_path, capsys):
    """Its prompt learner also saved the unused bias_vectors and meta_net (and token buffers of other classes)."""
    trainer = build(data_root)
    ctx = torch.randn(4, 64)
    state = OrderedDict([("ctx", ctx.half()), ("bias_vectors", torch.randn(1, 512).half()),
                         ("token_prefix", torch.randn(9, 1, 64).half()),
                         ("token_suffix", torch.randn(9, 72, 64).half()),
                         ("token_midfix", torch.randn(9, 3, 64).half()),
                         ("meta_net.linear1.weight", torch.randn(512, 512).half()),
                         ("meta_net.linear1.bias", torch.randn(512).half())])
    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    torch.save({"state_dict": state, "epoch": 100, "optimizer": None, "scheduler": None}, folder / "model.pth.tar-100")
    trainer.load_model(str(tmp_path), epoch=100)
    torch.testing.assert_close(trainer.model.prompt_learner.ctx, ctx.half().float())
    out = capsys.readouterr().out
    assert "bias_vectors, meta_net.linear1.weight, meta_net.linear1.bias" in out
    assert "(epoch = 100)" in out


def run(argv, output_dir):
    from trainers.engine.logger import close_logger
    try:
        code = train.main(["--output-dir", output_dir] + argv)
    finally:
        close_logger()
    assert code == 0
    return open(sorted(glob.glob(os.path.join(output_dir, "log.txt*")))[-1]).read()


@pytest.mark.slow
def test_base_to_new_end_to_end(data_root, tmp_path):
    common = ["--root", data_root, "--seed", "1", "--trainer", "KgCoOp", "--dataset-config-file",
              "configs/datasets/synthetic.yaml", "--config-file", TINY_CFG]
    base = str(tmp_path / "base")
    log = run(common + ["DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base"], base)
    assert re.search(r"epoch \[2/2\] batch \[5/5\] .* loss [\d.]+ \([\d.]+\) acc ", log)
    assert "Prompts: ['a photo of a red square.'" in log and "* accuracy:" in log
    saved = load_checkpoint(os.path.join(base, "prompt_learner", "model.pth.tar-2"))["state_dict"]
    assert list(saved) == ["ctx", "token_prefix", "token_suffix"]

    new_log = run(common + ["--model-dir", base, "--load-epoch", "2", "--eval-only",
                            "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new"], str(tmp_path / "new"))
    assert "Loading weights to prompt_learner" in new_log
    assert re.search(r"\* total: 40\n\* correct: \d+\n\* accuracy: [\d.]+%", new_log)
