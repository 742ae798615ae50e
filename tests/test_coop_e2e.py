"""CoOp and zero-shot CLIP end to end on the Synthetic set with the tiny random CLIP."""
import csv
import os
import re

import pytest
import torch

TINY_COOP = ["--trainer", "CoOp", "--dataset-config-file", "configs/datasets/synthetic.yaml",
             "--config-file", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml"]


def coop_args(root, *opts, flags=()):
    """Flags first: as in CoOp, everything after the first KEY VALUE option is an option."""
    return TINY_COOP + ["--root", root, "--seed", "1"] + list(flags) + \
        ["TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", "8"] + list(opts)


def losses(log: str):
    return [float(m) for m in re.findall(r" loss ([\d.]+) \(", log)]


def epoch_avg_losses(log: str):
    return [float(m) for m in re.findall(r"batch \[\d+/\d+\].* loss [\d.]+ \(([\d.]+)\)", log)]


def accuracy(log: str) -> float:
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


def read_predictions(path):
    with open(path) as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_coop_trains_tests_and_eval_only_reproduces_the_accuracy(run_train, data_root, tmp_path):
    out = str(tmp_path / "train")
    recipe = ["TRAINER.COOP.CSC", "True", "TRAINER.COOP.N_CTX", "16", "DATASET.NUM_SHOTS", "16",
              "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.SAVE_PREDICTIONS", "True"]
    code, log = run_train(*coop_args(data_root, *recipe), output_dir=out)
    assert code == 0
    per_epoch = epoch_avg_losses(log)
    assert per_epoch[-1] < per_epoch[0], per_epoch
    assert "Finished training" in log and "Finish training" in log
    acc = accuracy(log)
    assert acc >= 50.0, acc  # 5 base classes: chance is 20%
    assert os.path.isfile(os.path.join(out, "prompt_learner", "model.pth.tar-10"))
    assert open(os.path.join(out, "prompt_learner", "checkpoint")).read() == "model.pth.tar-10\n"
    assert os.path.isfile(os.path.join(out, "results.json"))

    evaluated = str(tmp_path / "eval")
    code, eval_log = run_train(*coop_args(data_root, *recipe, flags=["--model-dir", out, "--load-epoch", "10",
                                                                     "--eval-only"]), output_dir=evaluated)
    assert code == 0
    assert accuracy(eval_log) == acc
    assert 'Loading weights to prompt_learner from' in eval_log
    full_length = str(tmp_path / "full_length")
    code, full_log = run_train(*coop_args(data_root, *recipe, "MODEL.BACKBONE.TRUNCATE_TEXT", "False",
                                          flags=["--model-dir", out, "--load-epoch", "10", "--eval-only"]),
                               output_dir=full_length)
    assert code == 0 and accuracy(full_log) == acc
    ours, again, full = (read_predictions(os.path.join(d, "predictions.csv")) for d in (out, evaluated, full_length))
    for a, b in zip(ours[1:], full[1:]):
        assert torch.allclose(torch.tensor([float(v) for v in a[3:]]), torch.tensor([float(v) for v in b[3:]]),
                              atol=1e-3)
    assert ours[0][:3] == ["impath", "label", "prediction"]
    assert len(ours) == 1 + 5 * 8  # header + 5 base classes x 8 test images
    for a, b in zip(ours[1:], again[1:]):
        assert a[:3] == b[:3]
        assert torch.allclose(torch.tensor([float(v) for v in a[3:]]), torch.tensor([float(v) for v in b[3:]]),
                              atol=1e-4)


@pytest.mark.slow
def test_generic_context_checkpoint_loads_for_other_classes(run_train, data_root, tmp_path):
    """CoOp drops token_prefix/suffix on load, so a base-class model evaluates on new classes."""
    out = str(tmp_path / "base")
    assert run_train(*coop_args(data_root, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1"),
                     output_dir=out)[0] == 0
    code, log = run_train(*coop_args(data_root, "DATASET.SUBSAMPLE_CLASSES", "new",
                                     flags=["--model-dir", out, "--load-epoch", "1", "--eval-only"]),
                          output_dir=str(tmp_path / "new"))
    assert code == 0 and "SUBSAMPLE NEW CLASSES!" in log and "* total: 40" in log


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_names_key_and_shapes(run_train, data_root, tmp_path):
    out = str(tmp_path / "csc")
    assert run_train(*coop_args(data_root, "TRAINER.COOP.CSC", "True", "DATASET.SUBSAMPLE_CLASSES", "base",
                                "OPTIM.MAX_EPOCH", "1"), output_dir=out)[0] == 0
    code, log = run_train(*coop_args(data_root, "TRAINER.COOP.CSC", "True",
                                     flags=["--model-dir", out, "--load-epoch", "1", "--eval-only"]),
                          output_dir=str(tmp_path / "all"))
    assert code == 2 and "ctx: checkpoint [5, 4, 64] vs model [10, 4, 64]" in log


@pytest.mark.slow
def test_same_seed_gives_the_same_losses_and_resume_equals_an_uninterrupted_run(run_train, data_root, tmp_path):
    args = coop_args(data_root, "OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8")
    full, again = str(tmp_path / "full"), str(tmp_path / "again")
    code, log_full = run_train(*args, output_dir=full)
    assert code == 0
    code, log_again = run_train(*args, output_dir=again)
    assert losses(log_again) == losses(log_full)

    # Interrupt "again" after epoch 2: drop what epochs 3-4 wrote, then re-run into the same folder.
    folder = os.path.join(again, "prompt_learner")
    os.remove(os.path.join(folder, "model.pth.tar-4"))
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write("model.pth.tar-2\n")
    os.remove(os.path.join(again, "results.json"))
    code, log_resumed = run_train(*args, output_dir=again)
    assert code == 0
    assert "Found checkpoint at" in log_resumed and "Previous epoch: 2" in log_resumed
    assert "epoch [1/4]" not in log_resumed
    assert len(os.listdir(again)) >= 3  # the first log.txt was kept; the new one has a timestamp suffix
    n = len(losses(log_resumed))
    assert n > 0 and losses(log_resumed) == losses(log_full)[-n:]
    assert accuracy(log_resumed) == accuracy(log_full)


def test_text_features_are_encoded_once_per_evaluation(data_root, tmp_path, monkeypatch):
    import train
    from trainers.coop import TextPromptedCLIP
    from trainers.engine.logger import close_logger
    from trainers.engine.registry import build_trainer

    calls = []
    original = TextPromptedCLIP.class_text_features

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(TextPromptedCLIP, "class_text_features", counting)
    args = train.build_parser().parse_args(coop_args(data_root, "DATALOADER.TEST.BATCH_SIZE", "16",
                                                     flags=["--output-dir", str(tmp_path)]))
    cfg = train.setup_cfg(args)
    trainer = build_trainer(cfg)
    try:
        trainer.test()
    finally:
        close_logger()
    assert len(trainer.test_loader) == 5 and len(calls) == 1


def test_zeroshot_clip_equals_plain_clip_with_the_dataset_template(run_train, data_root, tmp_path):
    import clip
    import train
    from trainers.engine.registry import build_trainer

    out = str(tmp_path / "zs")
    code, log = run_train("--root", data_root, "--trainer", "ZeroshotCLIP", "--dataset-config-file",
                          "configs/datasets/synthetic.yaml", "--config-file",
                          "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", "--eval-only", "TEST.SAVE_PREDICTIONS", "True",
                          output_dir=out)
    assert code == 0 and "Prompts: ['a photo of a red square.'" in log
    rows = read_predictions(os.path.join(out, "predictions.csv"))[1:]

    model, preprocess = clip.load("tiny-ViT-B/16", device="cpu")
    names = ["red square", "blue circle"]
    text = model.encode_text(clip.tokenize([f"a photo of a {n}." for n in names]))
    from PIL import Image
    image = preprocess(Image.open(rows[0][0])).unsqueeze(0)
    img = model.encode_image(image)
    img, text = img / img.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = (model.logit_scale.exp() * img @ text.t())[0]
    got = torch.tensor([float(v) for v in rows[0][3:5]])
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_ensemble_zeroshot_uses_eight_templates(run_train, data_root, tmp_path):
    code, log = run_train("--root", data_root, "--trainer", "ZeroshotCLIP2", "--dataset-config-file",
                          "configs/datasets/synthetic.yaml", "--config-file",
                          "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", "--eval-only", output_dir=str(tmp_path))
    assert code == 0 and "Prompt ensembling (n=8)" in log


def test_bad_inputs_give_clear_errors(run_train, data_root, tmp_path, capsys):
    code, _ = run_train(*(["--trainer", "CoOpp"] + coop_args(data_root)[2:]), output_dir=str(tmp_path / "a"))
    assert code == 2 and 'Did you mean "CoOp"' in capsys.readouterr().err
    code, _ = run_train(*coop_args(data_root, "TRAINER.COOP.NCTX", "4"), output_dir=str(tmp_path / "b"))
    assert code == 2 and "TRAINER.COOP.N_CTX" in capsys.readouterr().err
    code, _ = run_train("--root", str(tmp_path / "nodata"), "--trainer", "CoOp", "--dataset-config-file",
                        "configs/datasets/oxford_pets.yaml", "--config-file",
                        "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", output_dir=str(tmp_path / "c"))
    assert code == 2 and "oxford_pets" in capsys.readouterr().err
    code, _ = run_train(*coop_args(data_root, flags=["--model-dir", str(tmp_path / "b"), "--load-epoch", "7",
                                                     "--eval-only"]), output_dir=str(tmp_path / "d"))
    assert code == 2 and "model.pth.tar-7" in capsys.readouterr().err


def test_list_registered_trainers_and_datasets(capsys):
    import train
    assert train.main(["--list-trainers", "--list-datasets"]) == 0
    out = capsys.readouterr().out
    assert "CoOp" in out and "ZeroshotCLIP2" in out and "OxfordPets" in out and "Synthetic" in out


@pytest.mark.slow
def test_multi_task_coop_reports_each_task_and_the_mean(run_train, data_root, tmp_path):
    out = str(tmp_path / "mt")
    code, log = run_train(*coop_args(data_root, "DATASET.NAME", "Synthetic,SyntheticB", "OPTIM.MAX_EPOCH", "2",
                                     "TEST.SAVE_PREDICTIONS", "True"), output_dir=out)
    assert code == 0
    assert "=> task: Synthetic" in log and "=> task: SyntheticB" in log
    task_acc = [float(a) for a in re.findall(r"\* accuracy: ([\d.]+)%", log)]
    assert task_acc[-1] == pytest.approx((task_acc[-3] + task_acc[-2]) / 2, abs=0.051)
    rows = read_predictions(os.path.join(out, "predictions.csv"))
    assert "task" in rows[0]
    assert {r[rows[0].index("task")] for r in rows[1:]} == {"Synthetic", "SyntheticB"}


@pytest.mark.slow
def test_best_val_deploys_the_best_checkpoint(run_train, data_root, tmp_path):
    out = str(tmp_path / "best")
    code, log = run_train(*coop_args(data_root, "TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "2"),
                          output_dir=out)
    assert code == 0 and "Evaluate on the *val* set" in log
    assert "Deploy the model with the best val performance" in log
    assert os.path.isfile(os.path.join(out, "prompt_learner", "model-best.pth.tar"))


@pytest.mark.slow
def test_negative_load_epoch_loads_the_latest_checkpoint(run_train, data_root, tmp_path):
    out = str(tmp_path / "train")
    assert run_train(*coop_args(data_root, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1"), output_dir=out)[0] == 0
    code, log = run_train(*coop_args(data_root, flags=["--model-dir", out, "--load-epoch", "-1", "--eval-only"]),
                          output_dir=str(tmp_path / "eval"))
    assert code == 0 and "model.pth.tar-2" in log


def test_multi_task_loss_is_cross_entropy_over_each_samples_own_task(data_root, tmp_path):
    import torch.nn.functional as F

    import train
    from trainers.engine.logger import close_logger
    from trainers.engine.registry import build_trainer
    from trainers.engine.trainer import Batch

    args = train.build_parser().parse_args(coop_args(data_root, "DATASET.NAME", "Synthetic,SyntheticB",
                                                     flags=["--output-dir", str(tmp_path)]))
    try:
        trainer = build_trainer(train.setup_cfg(args))
    finally:
        close_logger()
    first, second = trainer.dm.tasks
    assert len(trainer.classnames) == first.num_classes + second.num_classes
    local = torch.tensor([3, 0, 5, 1])
    tasks = torch.tensor([0, 1, 1, 0])
    logits = torch.randn(4, len(trainer.classnames))
    labels = trainer.labels_in_all_classes(local, tasks)
    assert labels.tolist() == [3, second.class_offset, second.class_offset + 5, 1]
    expected = torch.stack([
        F.cross_entropy(row[t.class_offset:t.class_offset + t.num_classes][None], y[None])
        for row, t, y in zip(logits, (trainer.dm.tasks[i] for i in tasks), local)]).mean()
    assert torch.allclose(trainer.classification_loss(logits, Batch(torch.zeros(4), labels, tasks)), expected)
