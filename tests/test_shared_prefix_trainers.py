"""Every trainer's loss, logits and prompt gradients are the same with the shared-prefix text
encoding (MODEL.BACKBONE.SHARED_PREFIX True, the default) as with full per-class encoding."""
from __future__ import annotations

import pytest
import torch

import train
from clip.model import CLIP
from trainers.engine.logger import close_logger
from trainers.engine.registry import build_trainer

TWO_TASKS = ["DATASET.NAME", "Synthetic,SyntheticB"]
CASES = {
    "CoOp end": ("CoOp", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", ["TRAINER.COOP.N_CTX", "4"]),
    "CoOp middle": ("CoOp", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml",
                    ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"]),
    "CoOp CSC (fallback)": ("CoOp", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml",
                            ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "True"]),
    "CoCoOp": ("CoCoOp", "configs/trainers/CoCoOp/tiny_vit_b16_c4_ep2_batch4.yaml", []),
    "KgCoOp": ("KgCoOp", "configs/trainers/KgCoOp/tiny_vit_b16_ep2_ctxv1.yaml", []),
    "MaPLe (deep prompts)": ("MaPLe", "configs/trainers/MaPLe/tiny_vit_b16_c2_ep2_batch4_2ctx.yaml", []),
    "DePT-CoOp": ("ExtrasLinearProbeCoOp", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml",
                  ["TRAINER.COOP.N_CTX", "4", "DATASET.SUBSAMPLE_CLASSES", "base"]),
    "ZeroshotCLIP (fixed text)": ("ZeroshotCLIP", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", []),
    "VPT (fixed text)": ("VPT", "configs/trainers/VPT/tiny_vit_b16_c2_ep2_batch4_4.yaml", []),
    "MCoOp": ("MCoOp", "configs/trainers/MCoOp/tiny_vit_b16_ep2.yaml", []),
    "MVPT (fixed text)": ("MVPT", "configs/trainers/MVPT/tiny_vit_b16_ep2.yaml", []),
    "MUPT (projected context)": ("MUPT", "configs/trainers/MUPT/tiny_vit_b16_ep2.yaml", []),
    "Adapt (K/V prompts)": ("Adapt", "configs/trainers/Adapt/tiny_vit_b16_ep4.yaml", []),
    "SoftCPT NATA (prefix per task)": ("MTCoOp", "configs/trainers/MTCoOp/tiny_vit_b16_ep2.yaml", TWO_TASKS),
    "SoftCPT CSTA (fallback)": ("MTCoOp", "configs/trainers/MTCoOp/tiny_vit_b16_ep2.yaml",
                                TWO_TASKS + ["TRAINER.MTCOOP.CSC", "True", "TRAINER.MTCOOP.CLASS_N_CTX", "4",
                                             "TRAINER.MTCOOP.CLASS_CSC", "True"]),
    "SoftCPT + MaPLe (deep prompts per task)": ("MTCoOpMaPLe", "configs/trainers/MTCoOpMaPLe/tiny_vit_b16_ep2.yaml",
                                                TWO_TASKS),
    "CoOp-MT": ("MTCoOpHard", "configs/trainers/MTCoOpHard/tiny_vit_b16_ep2.yaml", TWO_TASKS),
    "CoOp-CA (prefix per task)": ("MTCoOpHard", "configs/trainers/MTCoOpHard/tiny_vit_b16_ep2.yaml",
                                  TWO_TASKS + ["TRAINER.MTCOOPH.TSC", "True"]),
}
#: trainers that learn nothing on the text side (only the logits are compared)
NO_GRADIENTS = {"ZeroshotCLIP (fixed text)"}


def build(data_root: str, out: str, trainer: str, config: str, opts, shared: bool):
    args = train.build_parser().parse_args(
        ["--root", data_root, "--seed", "1", "--trainer", trainer, "--output-dir", out,
         "--dataset-config-file", "configs/datasets/synthetic.yaml", "--config-file", config,
         "DATASET.NUM_SHOTS", "2", "MODEL.BACKBONE.SHARED_PREFIX", str(shared)] + list(opts))
    cfg = train.setup_cfg(args)
    train.set_random_seed(cfg.SEED)
    try:
        return build_trainer(cfg)
    finally:
        close_logger()


@pytest.mark.parametrize("case", list(CASES))
def test_shared_prefix_gives_the_full_encodings_logits_and_gradients(case, data_root, tmp_path, monkeypatch):
    trainer_name, config, opts = CASES[case]
    calls = []
    shared_encoding = CLIP.encode_text_shared_prefix
    monkeypatch.setattr(CLIP, "encode_text_shared_prefix", lambda *a, **k: calls.append(1) or shared_encoding(*a, **k))
    torch.manual_seed(0)
    images = torch.randn(3, 3, 224, 224)
    labels = torch.tensor([0, 2, 1])
    results = []
    for shared in (False, True):
        trainer = build(data_root, str(tmp_path / str(shared)), trainer_name, config, opts, shared)
        trainer.set_model_mode("train")
        loss, logits = trainer.compute_loss(images, labels)
        assert bool(calls) == (shared and "fallback" not in case)
        if case not in NO_GRADIENTS:
            loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), logits.detach(), grads))
    (loss_full, logits_full, grads_full), (loss_shared, logits_shared, grads_shared) = results
    torch.testing.assert_close(loss_shared, loss_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_shared, logits_full, rtol=1e-5, atol=1e-4)
    assert (case in NO_GRADIENTS or grads_full) and grads_shared.keys() == grads_full.keys()
    for name, grad in grads_full.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (grads_shared[name] - grad).abs().max() / scale < 1e-4, name
