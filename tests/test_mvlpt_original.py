"""MVLPT's own checkpoints through MVLPT's command line: files in the original's layout and key
names (``prompt_learner/model.pth.tar-N``, ``model-best.pth.tar``, ``token_prefix``/``token_suffix``,
the released ``upt_proj`` names) evaluated with ``--eval-only`` and ``TEST.SAVE_PREDICTIONS True``
must give, per task, the original's forward written out here (union logits sliced to the task):
``predictions.csv`` has one row per test image in loader order, the ``task`` column in multi-task
runs, labels and logits within the task's own classes. ELEVATER runs also print MVLPT's
fractional result lines, and multi-label VOC is scored by 11-point mAP on the raw logits."""
import csv
import json
import os
import re

import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode

import clip
from datasets.build import build_dataset
from datasets.elevater import TASKS, read_elevater_image
from datasets.elevater.index import read_iris_index
from datasets.elevater.tasks import task_classnames
from datasets.synthetic_elevater import write_elevater_task
from test_mvlpt import original_theta
from test_vpt import reference_image_features
from trainers.engine.elevater_metrics import eleven_point_map

pytestmark = pytest.mark.slow

PEER_YAML = "/work/shared/peer-configs/MVLPT/configs/trainers/MVLPT/vit_b16.yaml"
REPO_YAML = "configs/trainers/MVLPT/vit_b16.yaml"  # the same file, kept in the repository
COOP_TASKS = ["Synthetic", "SyntheticB", "SyntheticC"]
FOLDERS = {"Synthetic": "synthetic", "SyntheticB": "synthetic_b", "SyntheticC": "synthetic_c"}
METHODS = {"MCoOp": (2, 0), "MVPT": (0, 2), "MUPT": (2, 2)}  # (text, visual) context lengths
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def model():
    tiny, _ = clip.load("tiny-ViT-B/16", device="cpu")
    return tiny.float().eval()


def yaml_path():
    return PEER_YAML if os.path.isfile(PEER_YAML) else REPO_YAML


def original_state(model, text_n, visual_n, n_cls, seed):
    """A prompt learner state dict as MVLPT writes it (UPT's theta under the released ``upt_proj`` names)."""
    g = torch.Generator().manual_seed(seed)
    text_dim, width, layers = model.ln_final.weight.shape[0], model.visual.transformer.width, 12

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=g)

    state = {"token_prefix": rand(n_cls, 1, text_dim), "token_suffix": rand(n_cls, 60, text_dim)}
    if text_n:
        state["ctx"] = rand(text_n, text_dim)
    if visual_n:
        state["vpt_embeddings"] = rand(1, visual_n, width)
        state["vpt_embeddings_deep"] = rand(layers - 1, visual_n, width)
    if text_n and visual_n:
        theta = clip.model.Transformer(width=128, layers=1, heads=1)
        state.update({f"upt_proj.{k}": rand(*v.shape) for k, v in theta.state_dict().items()})
        for name, (fan_in, fan_out) in {"pre": (text_dim, 128), "post": (128, text_dim)}.items():
            state[f"upt_proj_ctx_coop_{name}.weight"] = rand(fan_out, fan_in)
            state[f"upt_proj_ctx_coop_{name}.bias"] = rand(fan_out)
    return state


def write_original_run(folder, state, epoch):
    """``<folder>/prompt_learner/``: model.pth.tar-<epoch>, model-best.pth.tar and the pointer file."""
    target = os.path.join(folder, "prompt_learner")
    os.makedirs(target)
    checkpoint = {"state_dict": state, "epoch": epoch, "optimizer": {}, "scheduler": {}, "val_result": 0.5}
    torch.save(checkpoint, os.path.join(target, f"model.pth.tar-{epoch}"))
    torch.save(checkpoint, os.path.join(target, "model-best.pth.tar"))
    with open(os.path.join(target, "checkpoint"), "w") as f:
        f.write(f"model.pth.tar-{epoch}\n")


def original_prompts(model, state, text_n, visual_n):
    """(text context, per-layer visual prompts) after MVLPT's theta when both are learned."""
    ctx = state.get("ctx")
    visual = torch.cat([state["vpt_embeddings"], state["vpt_embeddings_deep"]]) if visual_n else None
    if text_n and visual_n:
        theta = clip.model.Transformer(width=128, layers=1, heads=1)
        theta.load_state_dict({k[len("upt_proj."):]: v for k, v in state.items() if k.startswith("upt_proj.")})
        pre, post = nn.Linear(ctx.shape[-1], 128), nn.Linear(128, ctx.shape[-1])
        for name, linear in (("pre", pre), ("post", post)):
            linear.load_state_dict({"weight": state[f"upt_proj_ctx_coop_{name}.weight"],
                                    "bias": state[f"upt_proj_ctx_coop_{name}.bias"]})
        u = torch.cat([pre(ctx), visual.reshape(-1, visual.shape[-1])]).unsqueeze(0)  # (1, T, 128), text first
        u = original_theta(theta, u)[0]
        ctx, visual = post(u[:text_n]), u[text_n:].reshape(visual.shape)
    return ctx, visual


@torch.no_grad()
def original_logits(model, classnames, state, text_n, visual_n, x):
    """MVLPT's CustomCLIP forward over all classes: "middle" CoOp prompts or the fixed VPT prompt,
    VPT-deep after ln_pre, exp(logit_scale) times the cosine similarity."""
    ctx, visual = original_prompts(model, state, text_n, visual_n)
    names = [c.replace("_", " ") for c in classnames]
    if text_n:
        tokens = clip.tokenize([" ".join(["X"] * text_n) + f" {name}." for name in names])
        embedded = model.token_embedding(tokens)
        half, rows = text_n // 2, []
        for i, name in enumerate(names):
            n = len(clip.tokenizer.get_tokenizer().encode(name))
            rows.append(torch.cat([embedded[i, :1], ctx[:half], embedded[i, 1 + text_n:1 + text_n + n], ctx[half:],
                                   embedded[i, 1 + text_n + n:]]))
        text = model.encode_text_embeddings(torch.stack(rows), tokens.argmax(dim=-1))
    else:
        text = model.encode_text(clip.tokenize(["a photo of a " + " " + name + "." for name in names]))
    image = reference_image_features(model, x, list(visual), before_ln_pre=False) if visual_n \
        else model.encode_image(x)
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.t()


def read_predictions(folder):
    with open(os.path.join(folder, "predictions.csv")) as f:
        return list(csv.DictReader(f))


def row_logits(row):
    return torch.tensor([float(v) for k, v in row.items() if k.startswith("logit_") and v != ""])


def check_rows(rows, expected, reference, multi_task):
    """``expected``: (impath, task, label, class offset, class count) per test image in loader order."""
    assert len(rows) == len(expected)
    for row, (impath, task, label, offset, count), ref in zip(rows, expected, reference):
        assert row["impath"] == impath
        assert ("task" in row) == multi_task and (not multi_task or row["task"] == task)
        assert int(row["label"]) == label and 0 <= label < count
        logits, own = row_logits(row), ref[offset:offset + count]
        assert logits.shape == (count,)  # the task's own classes only
        assert int(row["prediction"]) == int(own.argmax())
        assert torch.allclose(logits, own, rtol=1e-5, atol=1e-4)


def eval_args(data_root, model_dir, text_n, visual_n, *extra):
    return ["--root", data_root, "--trainer", "MVLPT", "--config-file", yaml_path(), "--eval-only",
            "--model-dir", model_dir, *extra, "MODEL.BACKBONE.NAME", "tiny-ViT-B/16",
            "TRAINER.MVLPT.PREC", "fp32", "DATALOADER.NUM_WORKERS", "0", "TRAINER.MVLPT.COOP.N_CTX", str(text_n),
            "TRAINER.MVLPT.VPT.N_CTX", str(visual_n), "TRAINER.MVLPT.COOP.CLASS_TOKEN_POSITION", "middle",
            "TEST.SAVE_PREDICTIONS", "True"]


# ----- CoOp-layout tasks (--dataset-coop): CLI task order, Dassl's test transform ---------------------------

def coop_test_items(data_root, tasks):
    """(path, task, local label, offset, count) of every test image, tasks in CLI order, split-file order."""
    items, offset = [], 0
    for task in tasks:
        folder = os.path.join(data_root, FOLDERS[task])
        with open(os.path.join(folder, f"split_zhou_{task}.json")) as f:
            split = json.load(f)
        count = len({label for _, label, _ in split["train"]})
        items += [(os.path.join(folder, "images", path), task, label, offset, count)
                  for path, label, _ in split["test"]]
        offset += count
    return items


def coop_classnames(data_root, tasks):
    names = []
    for task in tasks:
        with open(os.path.join(data_root, FOLDERS[task], f"split_zhou_{task}.json")) as f:
            names += [name for _, name in sorted({(label, name) for _, label, name in json.load(f)["train"]})]
    return names


DASSL_TEST = T.Compose([T.Resize(224, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                        T.Normalize(MEAN, STD)])
TOOLKIT = T.Compose([T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                     T.Normalize(MEAN, STD)])


def reference_for(model, items, classnames, state, text_n, visual_n, load, transform):
    x = torch.stack([transform(load(path)) for path, *_ in items])
    return torch.cat([original_logits(model, classnames, state, text_n, visual_n, x[i:i + 40])
                      for i in range(0, len(x), 40)])


def open_rgb(path):
    with Image.open(path) as img:
        return img.convert("RGB")


@pytest.fixture(scope="module")
def coop_data(data_root):
    """The three CoOp-layout tasks (written on first use) as test items and class names."""
    import train
    cfg = train.setup_cfg(train.build_parser().parse_args(["--root", data_root]))
    for task in COOP_TASKS:
        build_dataset(cfg, task)
    return coop_test_items(data_root, COOP_TASKS), coop_classnames(data_root, COOP_TASKS)


@pytest.mark.parametrize("method", list(METHODS))
def test_original_multi_task_checkpoints_predict_as_the_original(method, model, coop_data, data_root, tmp_path,
                                                                 run_train):
    text_n, visual_n = METHODS[method]
    items, classnames = coop_data
    state = original_state(model, text_n, visual_n, len(classnames), seed=len(method))
    write_original_run(str(tmp_path / "source"), state, epoch=7)
    cut = ["--cut-contextlen"] if text_n else []
    code, log = run_train(*eval_args(data_root, str(tmp_path / "source"), text_n, visual_n, "--dataset",
                                     ",".join(COOP_TASKS), "--dataset-coop", "--multi-task", "--load-epoch", "7", *cut),
                          output_dir=str(tmp_path / "eval"))
    assert code == 0, log[-2000:]
    assert "model.pth.tar-7" in log and "=> task: SyntheticC" in log
    reference = reference_for(model, items, classnames, state, text_n, visual_n, open_rgb, DASSL_TEST)
    check_rows(read_predictions(str(tmp_path / "eval")), items, reference, multi_task=True)


def test_a_source_initialised_target_trains_and_evaluates_as_the_original(model, coop_data, data_root, tmp_path,
                                                                           run_train):
    """MUPT: an original three-task source prompt (model-best.pth.tar) initialises a one-task target;
    the target's own checkpoint then evaluates to the original forward with its tensors."""
    items, classnames = coop_data
    state = original_state(model, 2, 2, len(classnames), seed=11)
    write_original_run(str(tmp_path / "source"), state, epoch=3)
    common = ["--dataset", "SyntheticB", "--dataset-coop", "--cut-contextlen", "--shots", "2", "--seed", "1"]
    train_args = [a for a in eval_args(data_root, str(tmp_path / "source"), 2, 2, *common) if a != "--eval-only"]
    code, log = run_train(*train_args, "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
                          output_dir=str(tmp_path / "target"))
    assert code == 0, log[-2000:]
    assert re.search(r'Loading weights to prompt_learner from ".*source/prompt_learner/model-best.pth.tar"', log)
    saved = torch.load(tmp_path / "target" / "prompt_learner" / "model.pth.tar-1", weights_only=False)["state_dict"]
    assert "token_prefix" not in saved and torch.allclose(saved["ctx"], state["ctx"], atol=1e-3)  # 1 epoch at 1e-5

    code, log = run_train(*eval_args(data_root, str(tmp_path / "target"), 2, 2, *common, "--load-epoch", "1"),
                          output_dir=str(tmp_path / "eval"))
    assert code == 0, log[-2000:]
    target = {k.replace("mvlpt_proj", "upt_proj"): v for k, v in saved.items()}
    own = [(path, task, label, 0, count) for path, task, label, offset, count in items if task == "SyntheticB"]
    names = classnames[10:16]
    reference = reference_for(model, own, names, target, 2, 2, open_rgb, DASSL_TEST)
    check_rows(read_predictions(str(tmp_path / "eval")), own, reference, multi_task=False)


# ----- ELEVATER-format tasks: sorted task order, the toolkit's squash resize, fractional result lines -------

def elevater_test_items(root, tasks):
    items, offset = [], 0
    for task in sorted(tasks):
        spec = TASKS[task]
        folder = os.path.join(root, spec.root_folder)
        images = read_iris_index(os.path.join(folder, spec.test_index))
        count = len(task_classnames(task))
        items += [(os.path.join(folder, img.path), task, img.labels[0], offset, count, img.labels) for img in images]
        offset += count
    return items


def test_original_checkpoints_on_elevater_tasks_predict_and_report_as_the_original(model, tmp_path, run_train):
    root = str(tmp_path / "data")
    for task in ("cifar-10", "voc-2007-classification"):
        write_elevater_task(root, task)

    # one task (MVPT): no task column, MVLPT's "results {'accuracy': ...}" as a fraction
    items = elevater_test_items(root, ["cifar-10"])
    names = task_classnames("cifar-10")
    state = original_state(model, 0, 2, len(names), seed=3)
    write_original_run(str(tmp_path / "single"), state, epoch=5)
    code, log = run_train(*eval_args(root, str(tmp_path / "single"), 0, 2, "--dataset", "cifar-10",
                                     "--load-epoch", "5"), output_dir=str(tmp_path / "e1"))
    assert code == 0, log[-2000:]
    reference = reference_for(model, items, names, state, 0, 2, read_elevater_image, TOOLKIT)
    check_rows(read_predictions(str(tmp_path / "e1")), [i[:5] for i in items], reference, multi_task=False)
    accuracy = (reference.argmax(dim=1) == torch.tensor([i[2] for i in items])).double().mean().item()
    line = re.search(r"Overall evaluation !\nresults \{'accuracy': ([0-9.e-]+)\}", log)
    assert line and float(line.group(1)) == pytest.approx(accuracy, abs=1e-12)

    # two tasks given out of order (MUPT): sorted, VOC scored by 11-point mAP on the raw logits
    items = elevater_test_items(root, ["voc-2007-classification", "cifar-10"])
    names = task_classnames("cifar-10") + task_classnames("voc-2007-classification")
    state = original_state(model, 2, 2, len(names), seed=4)
    write_original_run(str(tmp_path / "multi"), state, epoch=2)
    code, log = run_train(*eval_args(root, str(tmp_path / "multi"), 2, 2, "--dataset",
                                     "voc-2007-classification,cifar-10", "--multi-task", "--cut-contextlen",
                                     "--load-epoch", "2"), output_dir=str(tmp_path / "e2"))
    assert code == 0, log[-2000:]
    reference = reference_for(model, items, names, state, 2, 2, read_elevater_image, TOOLKIT)
    rows = read_predictions(str(tmp_path / "e2"))
    check_rows(rows, [i[:5] for i in items], reference, multi_task=True)
    assert [r["task"] for r in rows] == ["cifar-10"] * 20 + ["voc-2007-classification"] * 40
    voc = [i for i in items if i[1] == "voc-2007-classification"]
    hot = torch.zeros(len(voc), 20)
    for r, item in enumerate(voc):
        hot[r, list(item[5])] = 1
    assert hot.sum() > len(voc)  # some images carry two labels
    expected_map = eleven_point_map(reference[20:, 10:], hot)
    line = re.search(r"evaluate on the \*voc-2007-classification\* !\nresults \{'11point_mAP': ([0-9.e-]+)\}", log)
    assert line and float(line.group(1)) == pytest.approx(expected_map, abs=1e-6)
    assert "Overall evaluation !\nresults {'average': " in log
