"""DePT around any trainer: end to end, parameters, loss and fusion, lr groups, routing, checkpoints, registry,
channel importance. Tiny random CLIP + Synthetic data set, fp32 on the CPU."""
from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import train
import trainers  # noqa: F401  (registers trainers, DePT's resolver and config keys)
from datasets.registry import Registry
from trainers.analysis import channel_importance as ci
from trainers.base import normalize
from trainers.coop import CoOp
from trainers.dept import DePTTrainer, imagenet_variant_rows, routes_to_base
from trainers.engine.config import get_cfg_default
from trainers.engine.logger import close_logger
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer, extend_cfg
from trainers.heads import CATHead

#: tiny recipe (config file, extra options) per wrapped trainer
TINY = {"CoOp": ("configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", ["TRAINER.COOP.N_CTX", "4"]),
        "CoCoOp": ("configs/trainers/CoCoOp/tiny_vit_b16_c4_ep2_batch4.yaml", []),
        "KgCoOp": ("configs/trainers/KgCoOp/tiny_vit_b16_ep2_ctxv1.yaml", []),
        "MaPLe": ("configs/trainers/MaPLe/tiny_vit_b16_c2_ep2_batch4_2ctx.yaml", [])}
pytestmark = pytest.mark.filterwarnings("ignore:The training set has .* fewer than the batch size")

CAT_PARAMETERS = {"head.film_lp_img.scale", "head.film_lp_img.bias", "head.film_lp_text.scale",
                  "head.film_lp_text.bias", "head.linear_probe_proj.weight", "head.linear_probe_proj.bias"}
WEIGHT = 0.7


def require(baseline: str) -> None:
    if baseline not in TRAINER_REGISTRY:
        pytest.skip(f"trainer {baseline} is not registered yet, so DePT cannot wrap it")


def cli(baseline: str, root: str, *opts: str, trainer: str = "", dataset: str = "synthetic", flags=()) -> list:
    """train.py arguments for the tiny recipe of ``baseline`` (DePT around it unless ``trainer`` is given)."""
    config, extra = TINY[baseline]
    return ["--root", root, "--seed", "1", "--trainer", trainer or f"ExtrasLinearProbe{baseline}",
            "--dataset-config-file", f"configs/datasets/{dataset}.yaml", "--config-file", config, *flags,
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", *extra, *opts]


def make_trainer(argv: list, output_dir: str):
    cfg = train.setup_cfg(train.build_parser().parse_args(["--output-dir", output_dir] + argv))
    train.set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def run(argv: list, output_dir: str) -> str:
    try:
        assert train.main(["--output-dir", output_dir] + argv) == 0
    finally:
        close_logger()
    logs = sorted(f for f in os.listdir(output_dir) if f.startswith("log.txt"))
    return open(os.path.join(output_dir, logs[-1])).read()


def accuracy(log: str) -> float:
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


def first_test_batch(trainer):
    images, labels = trainer.parse_batch_test(next(iter(trainer.test_loader)))
    return images[:6], labels[:6]


@pytest.fixture(scope="module")
def coop_run(data_root, tmp_path_factory):
    """DePT-CoOp trained for 2 epochs on the base classes: (output dir, log)."""
    out = str(tmp_path_factory.mktemp("dept_coop") / "train_base")
    return out, run(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "2",
                        "TEST.SAVE_PREDICTIONS", "True"), out)


# ----- end to end ---------------------------------------------------------------------------------

def test_dept_coop_base_train_fused_test_and_new_eval(coop_run, data_root, tmp_path):
    out, log = coop_run
    assert "DePT head: base (ITM + CAT)" in log and "Learning rates: prompts 0.002 (1 tensors), CAT head 0.013" in log
    state = torch.load(os.path.join(out, "PromptLearner", "model.pth.tar-2"), weights_only=True)["state_dict"]
    assert set(state) == {"prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix",
                          "film_lp_img.scale", "film_lp_img.bias", "film_lp_text.scale", "film_lp_text.bias",
                          "linear_probe_proj.weight", "linear_probe_proj.bias"}
    assert state["linear_probe_proj.weight"].shape == (5, 64) and state["film_lp_img.scale"].dtype == torch.float32
    assert not torch.equal(state["film_lp_img.scale"], torch.ones(64))  # the CAT head trained

    evaluate = ["--model-dir", out, "--load-epoch", "-1", "--eval-only"]
    again = run(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.SAVE_PREDICTIONS", "True",
                    flags=evaluate), str(tmp_path / "base_eval"))
    assert accuracy(again) == accuracy(log) and "(epoch = 2)" in again
    saved, reloaded = (open(os.path.join(d, "predictions.csv")).read() for d in (out, str(tmp_path / "base_eval")))
    assert saved.splitlines()[1].split(",")[:3] == reloaded.splitlines()[1].split(",")[:3]

    new_log = run(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "new", flags=evaluate), str(tmp_path / "test_new"))
    assert "DePT head: new (ITM only)" in new_log and "Skipping the base-class classifier" in new_log
    assert "* total: 40" in new_log

    # The new-class model outputs the wrapped model's ITM logits with the trained prompt; it cannot train.
    trainer = make_trainer(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "new"), str(tmp_path / "x"))
    trainer.load_model(out, epoch=2)
    assert not trainer.model.head.has_classifier
    assert torch.equal(trainer.model.baseline.prompt_learner.ctx, state["prompt_learner.ctx"])
    images, labels = first_test_batch(trainer)
    with torch.no_grad():
        assert torch.equal(trainer.model_inference(images), trainer.model.baseline(images))
    with pytest.raises(ValueError, match="TRAINER.LINEAR_PROBE.ROUTE base"):
        trainer.compute_loss(images, labels)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["CoCoOp", "KgCoOp", "MaPLe"])
def test_dept_around_other_baselines_trains_and_evaluates_new_classes(baseline, data_root, tmp_path):
    require(baseline)
    out = str(tmp_path / "train_base")
    log = run(cli(baseline, data_root, "DATASET.SUBSAMPLE_CLASSES", "base"), out)
    assert "DePT head: base (ITM + CAT)" in log and "* accuracy:" in log
    folder = "MultiModalPromptLearner" if baseline == "MaPLe" else "PromptLearner"
    state = torch.load(os.path.join(out, folder, "model.pth.tar-1"), weights_only=True)["state_dict"]
    assert {"film_lp_text.bias", "linear_probe_proj.weight"} <= set(state)
    assert any(k.startswith("prompt_learner.") for k in state) and not any(k.startswith("clip.") for k in state)
    new_log = run(cli(baseline, data_root, "DATASET.SUBSAMPLE_CLASSES", "new",
                      flags=["--model-dir", out, "--load-epoch", "-1", "--eval-only"]), str(tmp_path / "test_new"))
    assert "DePT head: new (ITM only)" in new_log and "* total: 40" in new_log


# ----- the wrapped model ------------------------------------------------------------------------------

@pytest.mark.parametrize("baseline", list(TINY))
def test_wrapper_adds_only_the_cat_head(baseline, data_root, tmp_path):
    require(baseline)
    opts = ("DATASET.SUBSAMPLE_CLASSES", "base")
    plain = make_trainer(cli(baseline, data_root, *opts, trainer=baseline), str(tmp_path / "plain"))
    wrapped = make_trainer(cli(baseline, data_root, *opts), str(tmp_path / "dept"))
    names = {n: p.requires_grad for n, p in plain.model.named_parameters()}
    wrapped_names = {n: p.requires_grad for n, p in wrapped.model.named_parameters()}
    assert {n for n in wrapped_names if not n.startswith("baseline.")} == CAT_PARAMETERS
    assert {n[len("baseline."):]: g for n, g in wrapped_names.items() if n.startswith("baseline.")} == names
    assert all(wrapped_names[n] for n in CAT_PARAMETERS)


@pytest.fixture(scope="module")
def coop_trainer(data_root, tmp_path_factory):
    return make_trainer(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "4"),
                        str(tmp_path_factory.mktemp("coop_trainer")))


def randomize_head(head: CATHead) -> None:
    with torch.no_grad():
        for name, param in head.named_parameters():
            param.normal_(1.0 if name.endswith("scale") else 0.0, 0.3)


@pytest.fixture
def fixed_features(monkeypatch):
    """Patch a model's ``encode`` to return given features; restores it afterwards."""
    def patch(model, image_features, text_features):
        monkeypatch.setattr(model, "encode", lambda images, tasks=None: (image_features, text_features), raising=False)
    return patch


def itm(image_features, text_features, logit_scale):
    image_features, text_features = normalize(image_features), normalize(text_features)
    if text_features.dim() == 3:
        return logit_scale.exp() * (text_features @ image_features.unsqueeze(-1)).squeeze(-1)
    return logit_scale.exp() * image_features @ text_features.t()


def cat_rows(head, features, which):
    film = head.film_lp_img if which == "img" else head.film_lp_text
    scaled = features * film.scale + film.bias
    return scaled @ head.linear_probe_proj.weight.t() + head.linear_probe_proj.bias


@pytest.mark.parametrize("text_shape", ["classes", "per_image"])
def test_loss_is_the_dept_objective_on_fixed_features(coop_trainer, fixed_features, text_shape):
    trainer, model = coop_trainer, coop_trainer.model
    randomize_head(model.head)
    torch.manual_seed(0)
    labels = torch.tensor([0, 3, 3, 1])
    img = torch.randn(4, 64)
    txt = torch.randn(5, 64) if text_shape == "classes" else torch.randn(4, 5, 64)
    fixed_features(model.baseline, img, txt)
    loss, logits = trainer.compute_loss(torch.zeros(4, 3, 224, 224), labels)

    rows = txt[labels] if text_shape == "classes" else txt[torch.arange(4), labels]
    itm_logits = itm(img, txt, model.baseline.logit_scale)
    cat = torch.cat([cat_rows(model.head, rows, "text"), cat_rows(model.head, img, "img")])
    expected = (1 - WEIGHT) * F.cross_entropy(itm_logits, labels) + WEIGHT * F.cross_entropy(cat, labels.repeat(2))
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(logits, (1 - WEIGHT) * itm_logits + WEIGHT * cat[4:], atol=1e-4)
    loss.backward()
    assert model.head.film_lp_text.scale.grad is not None and model.head.linear_probe_proj.weight.grad is not None


@pytest.mark.parametrize("text_shape", ["classes", "per_image"])
def test_similarity_variant_uses_cosine_logits_of_transformed_features(data_root, tmp_path, fixed_features,
                                                                       text_shape):
    trainer = make_trainer(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "base",
                               "TRAINER.LINEAR_PROBE.TYPE", "similarity"), str(tmp_path))
    model = trainer.model
    assert not model.head.has_classifier
    randomize_head(model.head)
    labels, img = torch.tensor([2, 0, 4]), torch.randn(3, 64)
    txt = torch.randn(5, 64) if text_shape == "classes" else torch.randn(3, 5, 64)
    fixed_features(model.baseline, img, txt)
    loss, logits = trainer.compute_loss(torch.zeros(3, 3, 224, 224), labels)
    film_i, film_t = model.head.film_lp_img, model.head.film_lp_text
    cat = itm(img * film_i.scale + film_i.bias, txt * film_t.scale + film_t.bias, model.baseline.logit_scale)
    itm_logits = itm(img, txt, model.baseline.logit_scale)
    expected = (1 - WEIGHT) * F.cross_entropy(itm_logits, labels) + WEIGHT * F.cross_entropy(cat, labels)
    assert torch.allclose(loss, expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(img), (1 - WEIGHT) * itm_logits + WEIGHT * cat, atol=1e-4)


def test_dept_kgcoop_keeps_the_knowledge_guided_term(data_root, tmp_path, fixed_features):
    require("KgCoOp")
    trainer = make_trainer(cli("KgCoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "base"), str(tmp_path))
    model = trainer.model
    randomize_head(model.head)
    labels, img, txt = torch.tensor([1, 4]), torch.randn(2, 64), torch.randn(5, 64)
    fixed_features(model.baseline, img, txt)
    loss, _ = trainer.compute_loss(torch.zeros(2, 3, 224, 224), labels)
    cat = torch.cat([cat_rows(model.head, txt[labels], "text"), cat_rows(model.head, img, "img")])
    kg = 1 - F.cosine_similarity(txt, model.baseline.anchor_text_features, dim=-1).mean()
    expected = ((1 - WEIGHT) * F.cross_entropy(itm(img, txt, model.baseline.logit_scale), labels)
                + WEIGHT * F.cross_entropy(cat, labels.repeat(2)) + trainer.cfg.TRAINER.COOP.W * kg)
    assert trainer.cfg.TRAINER.COOP.W == 8.0 and torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.slow
def test_multi_task_dept_restricts_both_heads_to_each_samples_task(data_root, tmp_path, fixed_features):
    argv = cli("CoOp", data_root, "DATASET.NAME", "Synthetic,SyntheticB", "TRAINER.LINEAR_PROBE.ROUTE", "base")
    trainer = make_trainer(argv, str(tmp_path / "unit"))
    model, n = trainer.model, len(trainer.classnames)
    assert model.head.linear_probe_proj.weight.shape[0] == n  # the CAT classifier spans all tasks' classes
    randomize_head(model.head)
    tasks = torch.tensor([0, 1, 1])
    labels = trainer.labels_in_all_classes(torch.tensor([2, 0, 3]), tasks)
    img, txt = torch.randn(3, 64), torch.randn(n, 64)
    fixed_features(model.baseline, img, txt)
    loss, _ = trainer.compute_loss(torch.zeros(3, 3, 224, 224), labels, tasks)
    cat = torch.cat([cat_rows(model.head, txt[labels], "text"), cat_rows(model.head, img, "img")])
    itm_logits = itm(img, txt, model.baseline.logit_scale)
    expected = ((1 - WEIGHT) * F.cross_entropy(trainer.mask_other_tasks(itm_logits, tasks), labels)
                + WEIGHT * F.cross_entropy(trainer.mask_other_tasks(cat, tasks.repeat(2)), labels.repeat(2)))
    assert torch.allclose(loss, expected, atol=1e-5)
    assert not torch.allclose(loss, (1 - WEIGHT) * F.cross_entropy(itm_logits, labels)
                              + WEIGHT * F.cross_entropy(cat, labels.repeat(2)), atol=1e-3)

    log = run(argv, str(tmp_path / "run"))
    assert "=> task: Synthetic" in log and "=> task: SyntheticB" in log


def test_fusion_of_itm_and_cat_logits(data_root, tmp_path, fixed_features):
    trainer = make_trainer(cli("CoOp", data_root, "DATASET.SUBSAMPLE_CLASSES", "base",
                               "TRAINER.LINEAR_PROBE.FUSION", "probs"), str(tmp_path))
    model = trainer.model
    randomize_head(model.head)
    img, txt = torch.randn(3, 64), torch.randn(5, 64)
    fixed_features(model.baseline, img, txt)
    itm_logits, cat = itm(img, txt, model.baseline.logit_scale), cat_rows(model.head, img, "img")
    with torch.no_grad():
        assert torch.allclose(trainer.model_inference(img),
                              (1 - WEIGHT) * itm_logits.softmax(-1) + WEIGHT * cat.softmax(-1), atol=1e-6)
        model.fusion = "logits"  # DePT's code (the default)
        assert torch.allclose(model(img), (1 - WEIGHT) * itm_logits + WEIGHT * cat, atol=1e-4)
        model.test_time_fusion = False  # TRAINER.LINEAR_PROBE.TEST_TIME_FUSION False: the CAT head alone
        assert torch.allclose(model(img), cat, atol=1e-5)


def test_cat_head_starts_as_identity_transforms():
    head = CATHead(64, 5, torch.float16)
    x = torch.randn(3, 64)
    assert torch.equal(head.film_lp_img(x), x) and torch.equal(head.film_lp_text(x), x)
    assert head.film_lp_img.scale.dtype == torch.float32 and head.linear_probe_proj.weight.dtype == torch.float16
    assert head.film_lp_text(x.half()).dtype == torch.float16
    random = CATHead(64, 5, torch.float32, cwt_init="random")
    assert not torch.equal(random.film_lp_img(x), x) and (random.film_lp_img.scale - 1).abs().max() < 0.2
    for no_classifier in (CATHead(64, None, torch.float32), CATHead(64, 5, torch.float32, kind="similarity")):
        assert not no_classifier.has_classifier and not list(no_classifier.linear_probe_proj.parameters())
    assert CATHead(64, 5, torch.float32, use_cwt=False).transform_image(x) is x


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_learning_rate_groups_follow_lr_exp_after_the_shared_warmup(coop_trainer):
    optim, head = coop_trainer.optim, coop_trainer.model.head
    prompts, cat = optim.param_groups
    assert {id(p) for p in cat["params"]} == {id(p) for p in head.parameters()}
    assert [id(p) for p in prompts["params"]] == [id(coop_trainer.model.baseline.prompt_learner.ctx)]
    assert prompts["lr"] == cat["lr"] == 1e-5  # constant warm-up: both groups
    coop_trainer.sched.step()
    assert prompts["lr"] == pytest.approx(0.002) and cat["lr"] == pytest.approx(0.002 * 6.5)
    coop_trainer.sched.step()
    assert cat["lr"] / prompts["lr"] == pytest.approx(6.5) and prompts["lr"] < 0.002


@pytest.mark.parametrize("subsample, dataset, expected", [
    ("base", "Synthetic", True), ("new", "Synthetic", False), ("all", "ImageNet", True), ("all", "ImageNetA", True),
    ("all", "Caltech101", False), ("new", "ImageNet", False)])
def test_route_auto_is_depts_guess_and_the_key_overrides_it(subsample, dataset, expected):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.SUBSAMPLE_CLASSES, cfg.DATASET.NAME = subsample, dataset
    assert routes_to_base(cfg) is expected
    for route in ("base", "new"):
        cfg.TRAINER.LINEAR_PROBE.ROUTE = route
        assert routes_to_base(cfg) is (route == "base")


# ----- checkpoints ------------------------------------------------------------------------------------

def original_layout(model) -> dict:
    """The whole-CustomCLIP state dict DePT writes, with garbage frozen-CLIP entries."""
    clip = model.baseline.clip
    state = {f"prompt_learner.{k}": v for k, v in model.baseline.prompt_learner.state_dict().items()}
    state.update({k: v for k, v in model.head.state_dict().items()})
    state.update({f"image_encoder.{k}": torch.zeros_like(v) for k, v in clip.visual.state_dict().items()})
    text = {k: v for k, v in clip.state_dict().items() if k.startswith(("transformer.", "ln_final."))}
    text.update(positional_embedding=clip.positional_embedding, text_projection=clip.text_projection)
    state.update({f"text_encoder.{k}": torch.zeros_like(v) for k, v in text.items()})
    state["logit_scale"] = torch.tensor(0.0)
    return state


def test_original_layout_checkpoint_loads_and_reproduces_logits(data_root, tmp_path):
    opts = ("DATASET.SUBSAMPLE_CLASSES", "base")
    producer = make_trainer(cli("CoOp", data_root, *opts), str(tmp_path / "a"))
    randomize_head(producer.model.head)
    with torch.no_grad():
        producer.model.baseline.prompt_learner.ctx.normal_(0, 0.5)
    images, _ = first_test_batch(producer)
    with torch.no_grad():
        expected = producer.model(images)
    folder = tmp_path / "original" / "PromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": original_layout(producer.model), "epoch": 10, "optimizer": None, "scheduler": None},
               str(folder / "model.pth.tar-10"))

    consumer = make_trainer(cli("CoOp", data_root, *opts, "SEED", "7"), str(tmp_path / "b"))
    conv = consumer.model.baseline.clip.visual.conv1.weight.clone()
    consumer.load_model(str(tmp_path / "original"), epoch=-1)
    with torch.no_grad():
        assert torch.allclose(consumer.model(images), expected, atol=1e-5)
    assert torch.equal(consumer.model.baseline.clip.visual.conv1.weight, conv)


def test_imagenet_a_keeps_the_classifier_rows_of_its_classes(data_root, tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]
    root = tmp_path / "data"
    (root / "imagenet-adversarial").mkdir(parents=True)
    (root / "imagenet-adversarial" / "classnames.txt").write_text(
        "".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    for wnid in (wnids[4], wnids[1], wnids[3]):
        (root / "imagenet-adversarial" / "imagenet-a" / wnid).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "imagenet-adversarial" / "imagenet-a" / wnid / "0.png")
    trainer = make_trainer(cli("CoOp", str(root), dataset="imagenet_a"), str(tmp_path / "out"))
    assert trainer.model.base_route and trainer.model.head.linear_probe_proj.weight.shape[0] == 3
    state = {k: v.clone() for k, v in trainer._models["PromptLearner"].state_dict().items()}
    state["linear_probe_proj.weight"] = torch.arange(6.0)[:, None].repeat(1, 64)
    state["linear_probe_proj.bias"] = torch.arange(6.0)
    (tmp_path / "ckpt" / "PromptLearner").mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 1}, str(tmp_path / "ckpt" / "PromptLearner" / "model.pth.tar-1"))
    trainer.load_model(str(tmp_path / "ckpt"), epoch=1)
    assert trainer.model.head.linear_probe_proj.bias.tolist() == [1.0, 3.0, 4.0]
    assert trainer.model.head.linear_probe_proj.weight[:, 0].tolist() == [1.0, 3.0, 4.0]
    synthetic = make_trainer(cli("CoOp", data_root), str(tmp_path / "syn"))
    assert imagenet_variant_rows(synthetic.dm.dataset, 6) is None


# ----- registry -----------------------------------------------------------------------------------------

def test_every_trainer_resolves_under_both_wrapper_names(monkeypatch):
    wrapper = TRAINER_REGISTRY.get("ExtrasLinearProbeCoOp")
    assert TRAINER_REGISTRY.get("DePTCoOp") is wrapper and issubclass(wrapper, CoOp) and issubclass(wrapper, DePTTrainer)
    assert wrapper.checkpoint_name == "PromptLearner" and wrapper.config_node == "COOP"
    assert {"ExtrasLinearProbeCoOp", "DePTCoOp"} <= set(TRAINER_REGISTRY.names("*CoOp"))
    if "MaPLe" in TRAINER_REGISTRY:
        assert TRAINER_REGISTRY.get("ExtrasLinearProbeMaPLe").checkpoint_name == "MultiModalPromptLearner"

    monkeypatch.setattr(TRAINER_REGISTRY, "_entries", dict(TRAINER_REGISTRY._entries))

    class LaterPrompts(CoOp):
        """A trainer registered after DePT's module was imported."""

    TRAINER_REGISTRY.register(LaterPrompts)
    assert "ExtrasLinearProbeLaterPrompts" in TRAINER_REGISTRY.names()
    assert TRAINER_REGISTRY.get("DePTLaterPrompts").baseline_trainer is LaterPrompts
    for name, reason in (("ExtrasLinearProbeZeroshotCLIP", "PromptTrainer.build_model"),
                         ("DePTDePTCoOp", "already is a DePT trainer"), ("DePTNoSuchTrainer", "Unknown trainer")):
        assert name not in TRAINER_REGISTRY
        with pytest.raises(KeyError, match=reason):
            TRAINER_REGISTRY.get(name)


def test_registry_resolver_builds_each_name_once():
    registry = Registry("thing")
    registry.register(int, name="base")
    built = []

    def resolver(name):
        if name.startswith("Wrapped") and name[7:] in registry:
            built.append(name)
            return type(name, (), {})
        return None

    registry.add_resolver(resolver, lambda: ["Wrapped" + n for n, _ in registry.items() if not n.startswith("Wrapped")])
    assert registry.names() == ["Wrapped" + "base", "base"]
    assert "Wrappedbase" in registry and "Wrappedother" not in registry
    assert registry.get("Wrappedbase") is registry.get("Wrappedbase") and built == ["Wrappedbase"]
    with pytest.raises(KeyError, match='Did you mean "Wrappedbase"'):
        registry.get("Wrappedbse")


# ----- channel importance -----------------------------------------------------------------------------

def eq3_reference(img, txt, labels, window):
    """Paper Eq. 3 (with DePT's cyclic window) written as loops."""
    n, d = img.shape
    out = torch.zeros(d)
    for j in range(n):
        texts = txt[j] if txt.dim() == 3 else txt
        for r in range(d):
            channels = [(r + k) % d for k in range(window)]
            acts = torch.stack([(texts[i, channels] * img[j, channels]).sum().clamp(min=0) for i in range(len(texts))])
            out[r] += acts[labels[j]] / (acts.mean() + ci.EPS)
    return out / n


@pytest.mark.parametrize("window, per_image", [(1, False), (3, False), (1, True)])
def test_channel_importance_matches_equation_3(window, per_image):
    torch.manual_seed(0)
    img = normalize(torch.randn(5, 6))
    txt = normalize(torch.randn(5, 4, 6) if per_image else torch.randn(4, 6))
    labels = torch.tensor([0, 2, 3, 1, 2])
    total, count = ci.importance_terms(img, txt, labels, (2, 4), window)
    inside = labels >= 2
    reference = eq3_reference(img[inside], txt[inside][:, 2:] if per_image else txt[2:], labels[inside] - 2, window)
    assert count == 3 and torch.allclose(total / count, reference, atol=1e-5)
    assert ci.class_halves(5) == {"base": (0, 3), "new": (3, 5)}


def test_channel_importance_tool_writes_values_and_explains_a_missing_plot(coop_run, data_root, tmp_path, capsys,
                                                                       monkeypatch):
    out, _ = coop_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without matplotlib
    flags = ["--model-dir", out, "--load-epoch", "-1", "--output-dir", str(tmp_path), "--window", "4"]
    assert ci.main(cli("CoOp", data_root, flags=flags)) == 0
    lines = (tmp_path / "channel_importance.csv").read_text().splitlines()
    assert lines[0] == "channel,base,new,base_over_new" and len(lines) == 1 + 64
    assert "No plot: matplotlib is not installed" in capsys.readouterr().out
    assert ci.main(cli("CoOp", data_root, flags=flags)) == 2  # results exist: not replaced without --force
