"""Adapt: K/V prompts through CLIP's hooks, removal semantics, the pruning schedule, the trainer
end to end (report, checkpoints, resume mid-pruning, eval-only), DePT around it."""
import json
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from clip.model import CLIP
from clip.tiny import TINY_CONFIGS
from trainers.adapt import AdaptCLIP, AdaptPromptLearner, adapt_report, clip_parameters_without_token_embedding
from trainers.prompts.kv import KVPromptBank, PruningSchedule, token_scores
from trainers.zsclip import FixedPromptCLIP

NAMES = ["red square", "blue circle", "green triangle"]
TEXTS = [f"a photo of a {n}." for n in NAMES]
TINY_ADAPT = ["--trainer", "Adapt", "--dataset-config-file", "configs/datasets/synthetic.yaml",
              "--config-file", "configs/trainers/Adapt/tiny_vit_b16_ep4.yaml"]


def images(n=3, seed=0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def adapt(tiny_clip, max_tokens=3, std=0.5, seed=0):
    """An Adapt CLIP whose prompts are large enough to change the logits visibly."""
    torch.manual_seed(seed)
    learner = AdaptPromptLearner(tiny_clip, TEXTS, max_tokens, init_std=std)
    return AdaptCLIP(tiny_clip, learner), learner


def logits(model, x):
    with torch.no_grad():
        return model(x)


# ----- the model ----------------------------------------------------------------------------------

def test_without_kept_tokens_adapt_is_zero_shot_clip_with_the_same_template(tiny_clip):
    model, learner = adapt(tiny_clip)
    reference = FixedPromptCLIP(tiny_clip, [[t] for t in TEXTS])
    x = images()
    assert (logits(model, x) - logits(reference, x)).abs().max() > 1e-2  # all kept: prompts matter
    for bank in learner.banks().values():
        bank.mask.fill_(False)
    assert learner.image.layer_prompts() == [None] * tiny_clip.visual.transformer.layers
    assert torch.allclose(logits(model, x), logits(reference, x), atol=1e-4)


def test_a_pruned_token_is_absent_from_attention_not_a_zero_vector(tiny_clip):
    """Pruning slot 1 of layer 0 equals a bank that never had it; zeroing it instead differs
    (ln_1 and the K/V biases still give a zero vector a key and a value, spec §2.3)."""
    model, learner = adapt(tiny_clip)
    x = images()
    smaller_model, smaller = adapt(tiny_clip, max_tokens=2)
    with torch.no_grad():
        for name, bank in learner.banks().items():
            other = smaller.banks()[name]
            other.prompts[0] = bank.prompts[0, [0, 2]]  # layer 0 keeps slots 0 and 2 ...
            other.prompts[1:] = bank.prompts[1:, :2]
            bank.mask[1:, 2] = False  # ... the other layers slots 0 and 1
    for bank in learner.banks().values():
        bank.prune([(0, 1)])
    removed = logits(model, x)
    assert torch.allclose(removed, logits(smaller_model, x), atol=1e-5)
    assert torch.all(learner.image.prompts[0, 1] == 0) and torch.all(learner.text.prompts[0, 1] == 0)
    for bank in learner.banks().values():  # slot 1 of layer 0 back in as the zero vector it now is
        bank.mask[0, 1] = True
    assert (logits(model, x) - removed).abs().max() > 1e-3


def test_permuting_the_kept_slots_of_a_layer_leaves_the_logits_unchanged(tiny_clip):
    model, learner = adapt(tiny_clip)
    learner.image.prune([(0, 1)])
    x = images()
    before = logits(model, x)
    with torch.no_grad():
        for bank in learner.banks().values():
            order = torch.tensor([2, 1, 0])
            bank.prompts.copy_(bank.prompts[:, order])
            bank.mask.copy_(bank.mask[:, order])
    assert torch.allclose(logits(model, x), before, atol=1e-5)


def test_gradient_reaches_every_kept_token_and_no_pruned_one(tiny_clip):
    model, learner = adapt(tiny_clip, std=0.02)
    learner.image.prune([(0, 0), (1, 2)])
    learner.text.prune([(1, 1)])
    labels = torch.tensor([0, 1, 2])
    F.cross_entropy(model(images()), labels).backward()
    for bank in learner.banks().values():
        per_token = bank.prompts.grad.abs().sum(dim=-1)
        assert torch.all(per_token[~bank.mask] == 0)
        assert torch.all(per_token[bank.mask] > 0)


def test_text_prompts_in_the_first_block_reach_the_end_token(tiny_clip):
    model, learner = adapt(tiny_clip)
    learner.image.mask.fill_(False)
    learner.text.mask[1:] = False
    with torch.no_grad():
        prompted = model.class_text_features()
        learner.text.mask.fill_(False)
        plain = model.class_text_features()
    assert (prompted - plain).abs().max() > 1e-3


def test_scores_follow_their_definitions_and_ignore_pruned_tokens():
    bank = KVPromptBank(layers=2, max_tokens=2, width=3)
    with torch.no_grad():
        bank.prompts.copy_(torch.tensor([[[1., -2., 0.], [3., 0., 4.]], [[0., 1., 0.], [1., 1., 1.]]]))
    bank.prompts.grad = torch.tensor([[[2., 1., 5.], [-1., 0., 1.]], [[0., 0., 0.], [1., 2., 2.]]])
    bank.mask[1, 1] = False
    assert torch.equal(token_scores(bank, "snip"), torch.tensor([[4., 7.], [0., 0.]]))
    assert torch.allclose(token_scores(bank, "grad_norm"), torch.tensor([[30 ** 0.5, 2 ** 0.5], [0., 0.]]))
    assert torch.allclose(token_scores(bank, "l2"), torch.tensor([[5 ** 0.5, 5.], [1., 0.]]))
    assert torch.equal(token_scores(bank, "snip", "width"), torch.tensor([[4., 7.], [0., 0.]]) / 3)


# ----- the schedule on hand-made scores --------------------------------------------------------------

def masks(layers=2, slots=2):
    return {"image": torch.ones(layers, slots, dtype=torch.bool), "text": torch.ones(layers, slots, dtype=torch.bool)}


def drive(schedule, masks, scores, epochs, batches):
    """Run the trainer's protocol over ``epochs`` x ``batches`` steps; ``scores(step)`` gives each
    observed step's scores. Returns [(epoch, batch, pruned slots)] and applies them to ``masks``."""
    events, step = [], 0
    for epoch in range(epochs):
        for batch in range(batches):
            if schedule.active(epoch, masks):
                schedule.observe(scores(step), masks)
                step += 1
            pruned = schedule.to_prune(masks, epoch, batch + 1 == batches)
            for branch, layer, slot in pruned:
                assert masks[branch][layer, slot], "a pruned token came back as a candidate"
                masks[branch][layer, slot] = False
            if pruned:
                events.append((epoch, batch, pruned))
    return events


def test_warmup_then_one_step_per_window_of_the_lowest_accumulated_scores():
    """Step 0 alone would pick image (0, 0); over the window of 3 image (1, 1) and text (0, 1) are lowest."""
    per_step = [
        {"image": torch.tensor([[0.0, 5.0], [9.0, 9.0]]), "text": torch.tensor([[9.0, 9.0], [9.0, 9.0]])},
        {"image": torch.tensor([[9.0, 5.0], [0.5, 0.5]]), "text": torch.tensor([[9.0, 0.5], [9.0, 9.0]])},
        {"image": torch.tensor([[9.0, 5.0], [1.0, 0.0]]), "text": torch.tensor([[9.0, 0.5], [9.0, 9.0]])},
    ]
    m = masks()
    schedule = PruningSchedule(target=4, window=3, rate=2, warmup_epochs=2)
    events = drive(schedule, m, lambda step: per_step[step % 3], epochs=4, batches=2)
    # nothing in epochs 0-1; the window spans epochs 2 and 3 (3 minibatches), then 2 tokens
    assert events[0] == (3, 0, [("image", 1, 1), ("text", 0, 1)])
    # reset after pruning: the window now holds only the last step (scores of step 0 again)
    assert schedule.count == 1
    assert torch.equal(schedule.accumulated["image"], torch.tensor([[0.0, 5.0], [9.0, 0.0]], dtype=torch.float64))
    assert len(events) == 1 and int(m["image"].sum() + m["text"].sum()) == 6


def test_ties_break_image_first_then_layer_then_slot_and_pruned_tokens_are_no_candidates():
    m = masks()
    schedule = PruningSchedule(target=0, window=1, rate=3, warmup_epochs=0)
    flat = lambda step: {"image": torch.ones(2, 2), "text": torch.ones(2, 2)}  # noqa: E731
    events = drive(schedule, m, flat, epochs=1, batches=3)
    assert [e[2] for e in events] == [
        [("image", 0, 0), ("image", 0, 1), ("image", 1, 0)],
        [("image", 1, 1), ("text", 0, 0), ("text", 0, 1)],  # pruned ones score 0 but are never chosen
        [("text", 1, 0), ("text", 1, 1)],  # floor: only 2 left above the target 0
    ]


def test_never_below_the_target_and_inactive_once_reached():
    m = masks()
    schedule = PruningSchedule(target=5, window=2, rate=2, warmup_epochs=0)
    events = drive(schedule, m, lambda step: {"image": torch.rand(2, 2), "text": torch.rand(2, 2)},
                   epochs=3, batches=4)
    assert [len(e[2]) for e in events] == [2, 1]  # 8 -> 6 -> 5, then min(R_P, 1) = 1
    assert int(m["image"].sum() + m["text"].sum()) == 5
    assert not schedule.active(2, m)


def test_the_deadline_prunes_everything_above_the_target_at_the_end_of_its_epoch():
    m = masks()
    schedule = PruningSchedule(target=1, window=100, rate=1, warmup_epochs=1, deadline_epoch=3)
    score = {"image": torch.tensor([[4.0, 3.0], [2.0, 8.0]]), "text": torch.tensor([[5.0, 6.0], [7.0, 1.0]])}
    events = drive(schedule, m, lambda step: score, epochs=4, batches=3)
    assert events == [(2, 2, [("text", 1, 1), ("image", 1, 0), ("image", 0, 1), ("image", 0, 0),
                              ("text", 0, 0), ("text", 0, 1), ("text", 1, 0)])]
    assert m["image"][1, 1] and int(m["image"].sum() + m["text"].sum()) == 1
    with pytest.raises(ValueError, match="deadline epoch 1 must come after the 1 warmup"):
        PruningSchedule(target=1, window=2, rate=1, warmup_epochs=1, deadline_epoch=1)


def test_schedule_state_round_trip_continues_the_window():
    m = masks()
    a = PruningSchedule(target=0, window=3, rate=1, warmup_epochs=0)
    b = PruningSchedule(target=0, window=3, rate=1, warmup_epochs=0)
    a.observe({"image": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "text": torch.full((2, 2), 9.0)}, m)
    a.observe({"image": torch.tensor([[3.0, 0.0], [3.0, 4.0]]), "text": torch.full((2, 2), 9.0)}, m)
    b.load_state_dict(a.state_dict())
    step = {"image": torch.tensor([[0.0, 0.5], [0.0, 0.0]]), "text": torch.zeros(2, 2)}
    for s in (a, b):
        s.observe(step, m)
    assert a.to_prune(m, 0, False) == b.to_prune(m, 0, False) == [("image", 0, 1)]


# ----- report numbers -------------------------------------------------------------------------------

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


def test_vit_b16_report_uses_the_papers_denominator_and_width_times_tokens():
    with torch.device("meta"):  # the architecture without weights
        vit_b16 = CLIP(**VIT_B16)
    learner = AdaptPromptLearner(vit_b16, TEXTS, max_tokens=16)  # banks on the CPU, text embeddings on meta
    assert clip_parameters_without_token_embedding(vit_b16) == 124_323_841
    assert learner.image.mask.shape == learner.text.mask.shape == (12, 16)
    learner.image.mask[:, 11:] = False  # 12 x 11 = 132 image tokens
    learner.image.mask[0] = False  # 121
    learner.text.mask[3:, :] = False  # 3 x 16 = 48 text tokens
    report = adapt_report(vit_b16, learner, target=128)
    assert report["kept_tokens"] == {"image": [0] + [11] * 11, "text": [16] * 3 + [0] * 9}
    assert report["trainable_params"] == 768 * 121 + 512 * 48
    assert report["params_percent"] == pytest.approx(100 * (768 * 121 + 512 * 48) / 124_323_841)
    assert report["kept_total"] == 169 and not report["reached_target"]
    macs = report["macs"]
    assert macs["image_prompts"] == 121 * 1_482_240 and macs["text_prompts_per_class"] == 48 * 603_136
    assert 17.5e9 < macs["image_frozen"] < 17.7e9  # the usual ~17.6 GMACs of the ViT-B/16 image tower
    assert report["gmacs"] == pytest.approx((macs["image_frozen"] + macs["image_prompts"]) / 1e9)


def test_tiny_report_follows_the_models_own_widths_and_depth(tiny_clip):
    _, learner = adapt(tiny_clip)
    layers = tiny_clip.visual.transformer.layers
    learner.text.prune([(0, 0)])
    report = adapt_report(tiny_clip, learner, target=0)
    width_img, width_txt = tiny_clip.visual.transformer.width, tiny_clip.transformer.width
    assert (width_img, width_txt) == (TINY_CONFIGS["tiny-ViT-B/16"]["vision_width"],
                                      TINY_CONFIGS["tiny-ViT-B/16"]["transformer_width"])
    assert report["kept_tokens"] == {"image": [3] * layers, "text": [2] + [3] * (tiny_clip.transformer.layers - 1)}
    assert report["trainable_params"] == width_img * 3 * layers + width_txt * (3 * tiny_clip.transformer.layers - 1)


# ----- the trainer end to end -------------------------------------------------------------------------

def train_main(*argv):
    """``train.py`` in-process; returns (exit code, text of the run's newest log)."""
    import train
    from trainers.engine.logger import close_logger

    out = argv[argv.index("--output-dir") + 1]
    try:
        code = train.main(list(argv))
    finally:
        close_logger()
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))
    return code, open(os.path.join(out, logs[-1])).read()


def adapt_args(root, out, *opts, flags=(), trainer_args=TINY_ADAPT):
    return ["--output-dir", str(out)] + list(trainer_args) + ["--root", root, "--seed", "1"] + list(flags) + \
        ["DATASET.NUM_SHOTS", "2"] + list(opts)


#: prompt tokens of the tiny recipe: 1 slot per layer and branch of the 12-layer tiny CLIP
TINY_TOKENS = 2 * 12

#: 4 epochs of 5 batches, a checkpoint after epoch 2 (mid-pruning: 1 minibatch in the open window)
RUN_OPTS = ("TRAIN.CHECKPOINT_FREQ", "2", "TEST.SAVE_PREDICTIONS", "True")


@pytest.fixture(scope="module")
def tiny_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "run"
    code, log = train_main(*adapt_args(data_root, out, *RUN_OPTS))
    assert code == 0
    return str(out), log


def prune_lines(log):
    return re.findall(r"Adapt: pruned .*", log)


def losses(log):
    return [float(m) for m in re.findall(r" loss ([\d.]+) \(", log)]


def accuracy(log):
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


def checkpoint(run, epoch, folder="prompt_learner"):
    return torch.load(os.path.join(run, folder, f"model.pth.tar-{epoch}"), weights_only=True)


def test_run_prunes_after_warmup_to_the_target_and_reports_it(tiny_run, tiny_clip):
    run, log = tiny_run
    lines = prune_lines(log)
    assert lines[0].startswith("Adapt: pruned 4 tokens at epoch 2 batch 2")  # warmup 1 epoch, N_K 2, R_P 4
    assert len(lines) == -(-(TINY_TOKENS - 6) // 4) and "kept 6 " in lines[-1]
    assert "Adapt: final kept tokens 6 (T_target 6 reached)" in log
    state = checkpoint(run, 4)["state_dict"]
    assert set(state) == {"image.prompts", "image.mask", "text.prompts", "text.mask"}
    with open(os.path.join(run, "results.json")) as f:
        report = json.load(f)["adapt"]
    kept = {b: state[f"{b}.mask"].sum(dim=1).tolist() for b in ("image", "text")}
    assert report["kept_tokens"] == kept and report["kept_total"] == 6 and report["reached_target"]
    widths = {b: state[f"{b}.prompts"].shape[-1] for b in ("image", "text")}
    params = sum(widths[b] * sum(kept[b]) for b in kept)
    assert report["trainable_params"] == params
    assert params == sum(int((p != 0).any(dim=-1).sum()) * p.shape[-1] for k, p in state.items() if "prompts" in k)
    assert report["params_percent"] == pytest.approx(100 * params / clip_parameters_without_token_embedding(tiny_clip))

    with open(os.path.join(run, "adapt_masks.json")) as f:
        history = json.load(f)["epochs"]
    assert [e["epoch"] for e in history] == [0, 1, 2, 3, 4]
    totals = [sum(map(sum, e["image"])) + sum(map(sum, e["text"])) for e in history]
    assert totals[:2] == [TINY_TOKENS, TINY_TOKENS] and totals[-1] == 6 and totals == sorted(totals, reverse=True)
    assert history[-1]["image"] == state["image.mask"].int().tolist()


def test_checkpoint_holds_zero_vectors_and_zero_momentum_for_pruned_tokens(tiny_run):
    saved = checkpoint(tiny_run[0], 4)
    momentum = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    assert len(momentum) == 2
    for branch in ("image", "text"):
        prompts, mask = saved["state_dict"][f"{branch}.prompts"], saved["state_dict"][f"{branch}.mask"]
        assert torch.all(prompts[~mask] == 0) and torch.all(prompts[mask].abs().sum(dim=-1) > 0)
        buffer = next(m for m in momentum if m.shape == prompts.shape)
        assert torch.all(buffer[~mask] == 0) and torch.all(buffer[mask].abs().sum(dim=-1) > 0)


def test_eval_only_restores_the_masks_and_reproduces_the_predictions(tiny_run, data_root, tmp_path):
    run, log = tiny_run
    out = tmp_path / "eval"
    code, eval_log = train_main(*adapt_args(data_root, out, "TEST.SAVE_PREDICTIONS", "True",
                                            flags=["--model-dir", run, "--load-epoch", "4", "--eval-only"]))
    assert code == 0 and accuracy(eval_log) == accuracy(log)
    with open(out / "results.json") as f:
        assert json.load(f)["adapt"]["kept_total"] == 6
    trained, evaluated = (open(os.path.join(d, "predictions.csv")).read().splitlines() for d in (run, str(out)))
    assert len(trained) == 1 + 80
    for a, b in zip(trained[1:], evaluated[1:]):
        a, b = a.split(","), b.split(",")
        assert a[:3] == b[:3]
        assert torch.allclose(torch.tensor([float(v) for v in a[3:]]), torch.tensor([float(v) for v in b[3:]]),
                              atol=1e-4)


def test_resume_mid_pruning_prunes_exactly_as_the_uninterrupted_run(tiny_run, data_root, tmp_path):
    """Stop after epoch 2 (one minibatch in the open window), resume: same prunes, losses, masks."""
    run, log = tiny_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(run, resumed)
    os.remove(os.path.join(resumed, "prompt_learner", "model.pth.tar-4"))
    with open(os.path.join(resumed, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-2\n")
    os.remove(os.path.join(resumed, "results.json"))
    assert checkpoint(resumed, 2)["trainer_state"]["method"]["schedule"]["count"] == 1
    code, resumed_log = train_main(*adapt_args(data_root, resumed, *RUN_OPTS))
    assert code == 0 and "epoch [1/4]" not in resumed_log and "epoch [3/4]" in resumed_log
    tail = [line for line in prune_lines(log) if re.search(r"at epoch [34] ", line)]
    assert prune_lines(resumed_log) == tail and tail[0].startswith("Adapt: pruned 4 tokens at epoch 3 batch 1")
    n = len(losses(resumed_log))
    assert n > 0 and losses(resumed_log) == losses(log)[-n:]
    assert accuracy(resumed_log) == accuracy(log)
    for key, value in checkpoint(run, 4)["state_dict"].items():
        assert torch.equal(checkpoint(resumed, 4)["state_dict"][key], value), key


def test_mask_analysis_writes_kept_tokens_per_epoch_branch_and_layer(tiny_run, tmp_path, tiny_clip):
    from trainers.analysis import adapt_masks

    assert adapt_masks.main([tiny_run[0], "--output-dir", str(tmp_path)]) == 0
    with open(tmp_path / "adapt_masks.csv") as f:
        rows = f.read().splitlines()
    layers = tiny_clip.visual.transformer.layers + tiny_clip.transformer.layers
    assert rows[0] == "epoch,branch,layer,kept,slots" and len(rows) == 1 + 5 * layers
    assert rows[1] == "0,image,1,1,1"
    last = [r.split(",") for r in rows[-layers:]]
    assert sum(int(r[3]) for r in last) == 6


def test_dept_around_adapt_trains_prunes_and_saves_the_masks(data_root, tmp_path):
    """``ExtrasLinearProbeAdapt`` resolves with no DePT code for Adapt; Adapt's hooks run inside it."""
    out = tmp_path / "dept"
    args = ["--trainer", "ExtrasLinearProbeAdapt", "--dataset-config-file", "configs/datasets/synthetic.yaml",
            "--config-file", "configs/trainers/Adapt/tiny_vit_b16_ep4.yaml"]
    code, log = train_main(*adapt_args(data_root, out, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1",
                                       "TRAINER.ADAPT.WARMUP_EPOCHS", "0", trainer_args=args))
    assert code == 0 and "* accuracy:" in log
    assert prune_lines(log)[0].startswith("Adapt: pruned 4 tokens at epoch 1 batch 2")
    state = checkpoint(str(out), 1, folder="PromptLearner")["state_dict"]
    assert int(state["prompt_learner.image.mask"].sum() + state["prompt_learner.text.mask"].sum()) < TINY_TOKENS
    assert any(k.startswith("linear_probe_proj") for k in state)
    with open(out / "results.json") as f:
        assert json.load(f)["adapt"]["kept_total"] < TINY_TOKENS


def test_config_errors_name_the_key(data_root, tmp_path):
    import train
    from trainers.engine.logger import close_logger
    from trainers.engine.registry import build_trainer

    for opts, message in ((("TRAINER.ADAPT.SCORE", "taylor"), "TRAINER.ADAPT.SCORE must be one of"),
                          (("TRAINER.ADAPT.TEXT_TEMPLATE", "a photo"), "TEXT_TEMPLATE must hold one"),
                          (("TRAINER.ADAPT.PRUNE_DEADLINE_EPOCH", "1"), "deadline epoch 1 must come after"),
                          (("MODEL.BACKBONE.NAME", "tiny-RN50"), "needs a ViT backbone")):
        cfg = train.setup_cfg(train.build_parser().parse_args(adapt_args(data_root, tmp_path, *opts)))
        try:
            with pytest.raises(ValueError, match=message):
                build_trainer(cfg)
        finally:
            close_logger()


# ----- T_target selection, tables, scripts ----------------------------------------------------------------

def test_selection_takes_the_best_mean_validation_target_ties_to_the_smaller():
    from trainers.analysis.adapt_select import select

    val = {16: {1: 80.0, 2: 70.0}, 32: {1: 70.0, 2: 90.0}, 64: {1: 90.0, 2: 70.0}, 128: {1: 60.0}}
    test = {16: {1: 50.0, 2: 52.0}, 32: {1: 60.0, 2: 62.0}, 64: {1: 70.0, 2: 72.0}, 128: {1: 99.0, 2: 99.0}}
    choice = select(test, val)
    assert choice["seeds"] == [1]  # seed 2 lacks a validation result for T 128
    assert choice["target"] == 64 and choice["test"] == 70.0
    del val[128]
    choice = select(test, val)
    assert choice["seeds"] == [1, 2] and choice["target"] == 32  # 32 and 64 tie at 80.0: the smaller T
    assert choice["test"] == 61.0
    assert choice["per_seed_targets"] == {1: 64, 2: 32} and choice["per_seed_test"] == (70.0 + 62.0) / 2


def fake_run(root, dataset, variant, seed, acc, params, reached=True):
    folder = os.path.join(root, dataset, "shots_16", "Adapt", "vit_b16", variant, f"seed{seed}")
    os.makedirs(folder)
    record = {"metrics": {"accuracy": acc}, "adapt": {"trainable_params": params, "params_percent": params / 1e4,
                                                      "gmacs": 17.6, "reached_target": reached}}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(record, f)


def test_tables_print_our_seed_means_beside_the_papers_rows(tmp_path, capsys):
    from trainers.analysis import adapt_tables

    fake_run(str(tmp_path), "eurosat", "T128_ctx16_snip", 1, 90.0, 80_000)
    fake_run(str(tmp_path), "eurosat", "T128_ctx16_snip", 2, 92.0, 82_000, reached=False)
    fake_run(str(tmp_path), "dtd", "T128_ctx16_snip", 1, 70.0, 81_000)
    assert adapt_tables.main([str(tmp_path), "--table", "1"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if "ours: Adapt T=128" in line)
    assert "81,000 (8.100)" in ours and "| 70.00 " in ours and "| 91.00 " in ours and "80.50*" in ours
    paper = next(line for line in out.splitlines() if "paper: Adapt T=128" in line)
    assert "82,227 (0.066)" in paper and paper.rstrip(" |").endswith("81.70")
    assert "1 of 3 of our runs ended above their T_target" in out


def test_select_script_trains_the_grid_evaluates_on_validation_and_chooses(data_root, tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("configs", "scripts", "train.py"):
        os.symlink(os.path.join(repo, name), tmp_path / name)
    env = dict(os.environ, DATA=data_root, SEEDS="1", PYTHON=sys.executable, PYTHONPATH=repo, GRID="6 16",
               CFG="tiny_vit_b16_ep4", SHOTS="2", MAX_CTX="1",
               EXTRA_OPTS="OPTIM.MAX_EPOCH 1 TRAINER.ADAPT.WARMUP_EPOCHS 0")
    run = subprocess.run(["bash", "scripts/adapt/select_ttarget.sh", "synthetic"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    variant = "synthetic/shots_2/Adapt/tiny_vit_b16_ep4/T16_ctx1_snip/seed1"
    with open(tmp_path / "output/adapt" / variant / "results.json") as f:
        trained = json.load(f)
    with open(tmp_path / "output/adapt_val" / variant / "results.json") as f:
        validated = json.load(f)
    assert trained["adapt"]["kept_total"] == 16 and validated["adapt"]["kept_total"] == 16  # 1 epoch: 24 -> 16
    assert validated["split"] == "val" and validated["eval_only"]
    row = next(line for line in run.stdout.splitlines() if line.startswith("| synthetic"))
    assert re.search(r"\| synthetic\s+\| (6|16)\s+\|", row)
