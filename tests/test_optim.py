"""Optimisers and lr schedules: Dassl's per-epoch lrs and settings, and a resume that works."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from trainers.engine.config import get_cfg_default
from trainers.engine.optim import build_lr_scheduler, build_optimizer

ETA = 0.002


def optim_cfg(**overrides):
    """CoCoOp's OPTIM node (sgd, 0.002, 10 epochs, cosine, 1 constant warm-up epoch at 1e-5)."""
    cfg = get_cfg_default().OPTIM
    cfg.NAME = "sgd"
    cfg.LR = ETA
    cfg.MAX_EPOCH = 10
    cfg.LR_SCHEDULER = "cosine"
    cfg.WARMUP_EPOCH = 1
    cfg.WARMUP_TYPE = "constant"
    cfg.WARMUP_CONS_LR = 1e-5
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build(cfg):
    param = nn.Parameter(torch.linspace(-1.0, 1.0, 4))
    optimizer = build_optimizer([param], cfg)
    return optimizer, build_lr_scheduler(optimizer, cfg)


def run_epochs(optimizer, scheduler, epochs):
    """The trainer's order: read the epoch's lr, step the optimizer, then the scheduler once."""
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
    return lrs


def lr_sequence(epochs=None, **overrides):
    cfg = optim_cfg(**overrides)
    return run_epochs(*build(cfg), epochs or cfg.MAX_EPOCH)


def cosine(e, E=10):
    return ETA * (1 + math.cos(math.pi * e / E)) / 2


def test_cocoop_cosine_with_constant_warmup_matches_dassl():
    expected = [1e-05, 0.002, 0.00195106, 0.00180902, 0.00158779, 0.00130902, 0.001,
                0.000690983, 0.000412215, 0.000190983]
    assert lr_sequence() == pytest.approx(expected, rel=1e-5)


def test_cosine_without_warmup():
    lrs = lr_sequence(WARMUP_EPOCH=-1)
    assert lrs[:2] == pytest.approx([0.002, 0.00195106], rel=1e-5)
    assert lrs[-1] == pytest.approx(4.89435e-05, rel=1e-5)
    assert lrs == pytest.approx([cosine(e) for e in range(10)], rel=1e-5)


def test_warmup_recount_false_rescales_the_cosine():
    lrs = lr_sequence(WARMUP_RECOUNT=False)
    assert lrs[:4] == pytest.approx([1e-05, 0.002, 0.0018544, 0.00162762], rel=1e-5)
    assert lrs[-1] == pytest.approx(5.01713e-05, rel=1e-5)
    rescaled = [ETA * (1 + math.cos(math.pi * e / 10)) / (1 + math.cos(math.pi / 10))
                for e in range(1, 10)]
    assert lrs[1:] == pytest.approx(rescaled, rel=1e-5)


def test_linear_warmup_then_shifted_cosine():
    lrs = lr_sequence(WARMUP_EPOCH=3, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-5, WARMUP_CONS_LR=0.5)
    expected = [1e-5, ETA / 3, 2 * ETA / 3] + [cosine(e - 3) for e in range(3, 10)]
    assert lrs == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stepsize", [(4,), [9, 4]])
def test_single_step_with_warmup_drops_every_stepsize_after_warmup(stepsize):
    lrs = lr_sequence(LR_SCHEDULER="single_step", STEPSIZE=stepsize)
    assert lrs == pytest.approx([1e-5] + [0.002] * 4 + [0.0002] * 4 + [2e-5], rel=1e-5)


def test_single_step_nonpositive_stepsize_means_max_epoch():
    lrs = lr_sequence(epochs=4, LR_SCHEDULER="single_step", STEPSIZE=(-1,), MAX_EPOCH=3,
                      WARMUP_EPOCH=-1)
    assert lrs == pytest.approx([0.002] * 3 + [0.0002], rel=1e-5)


def test_multi_step_with_warmup():
    lrs = lr_sequence(LR_SCHEDULER="multi_step", STEPSIZE=(3, 6))
    assert lrs == pytest.approx([1e-5] + [0.002] * 3 + [0.0002] * 3 + [2e-5] * 3, rel=1e-5)


def test_coop_200_epoch_endpoints():
    lrs = lr_sequence(MAX_EPOCH=200)
    assert lrs[0] == pytest.approx(1e-5, rel=1e-5)
    assert lrs[1] == pytest.approx(0.002, rel=1e-5)
    assert lrs[-1] == pytest.approx(4.93e-7, rel=1e-3)
    assert lrs[-1] == pytest.approx(0.001 * (1 + math.cos(math.pi * 198 / 200)), rel=1e-5)


def assert_plain(value, where="scheduler"):
    """Only builtin containers and scalars: nothing that needs an allow-list to unpickle."""
    if type(value) is dict:
        for key, item in value.items():
            assert type(key) in (str, int), f"{where}: key {key!r}"
            assert_plain(item, f"{where}.{key}")
    elif type(value) is list:
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    else:
        assert type(value) in (int, float, str, bool, type(None)), f"{where}: {type(value)}"


@pytest.mark.parametrize("overrides", [
    {},
    {"WARMUP_RECOUNT": False},
    {"LR_SCHEDULER": "single_step", "STEPSIZE": (3,), "WARMUP_EPOCH": 2, "WARMUP_TYPE": "linear"},
    {"LR_SCHEDULER": "multi_step", "STEPSIZE": (3, 6)},
    {"WARMUP_EPOCH": -1},
], ids=["cosine", "no-recount", "single-linear", "multi", "no-warmup"])
def test_resume_through_weights_only_load_follows_the_schedule(tmp_path, overrides):
    cfg = optim_cfg(**overrides)
    uninterrupted = run_epochs(*build(cfg), 10)

    optimizer, scheduler = build(cfg)
    before = run_epochs(optimizer, scheduler, 4)
    if cfg.WARMUP_EPOCH > 0:
        assert_plain(scheduler.state_dict())
    path = tmp_path / "model.pth.tar-4"
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)

    checkpoint = torch.load(path, weights_only=True)
    optimizer, scheduler = build(cfg)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    after = run_epochs(optimizer, scheduler, 6)
    assert before + after == pytest.approx(uninterrupted, rel=1e-12)


def dassl_warmup_state(successor):
    """What Dassl's ConstantWarmupScheduler saved after epoch 4 of CoCoOp's schedule."""
    lr = cosine(3)
    return {"cons_lr": 1e-5, "successor": successor, "warmup_epoch": 1, "base_lrs": [ETA],
            "last_epoch": 1, "verbose": False, "_step_count": 2,
            "_get_lr_called_within_step": False, "_last_lr": [lr]}


def test_loads_dassl_state_with_stripped_successor_and_keeps_scheduling():
    stripped = {"T_max": 10.0, "eta_min": 0, "base_lrs": [ETA], "last_epoch": 3, "verbose": False,
                "_step_count": 4, "_get_lr_called_within_step": False, "_last_lr": [cosine(3)],
                "optimizer": {"defaults": {"lr": ETA}, "state": {}, "param_groups": []}}
    optimizer, scheduler = build(optim_cfg())
    scheduler.load_state_dict(dassl_warmup_state(stripped))
    # No optimizer state loaded: the scheduler alone restores the lr in force.
    assert run_epochs(optimizer, scheduler, 6) == pytest.approx(
        [cosine(e - 1) for e in range(4, 10)], rel=1e-9)


def test_loads_dassl_state_with_pickled_successor_without_driving_its_optimizer():
    other_param = nn.Parameter(torch.zeros(2))
    other = torch.optim.SGD([other_param], lr=ETA)
    pickled = CosineAnnealingLR(other, T_max=10.0)
    run_epochs(other, pickled, 3)
    frozen = other.param_groups[0]["lr"]

    optimizer, scheduler = build(optim_cfg())
    scheduler.load_state_dict(dassl_warmup_state(pickled))
    assert run_epochs(optimizer, scheduler, 6) == pytest.approx(
        [cosine(e - 1) for e in range(4, 10)], rel=1e-9)
    assert other.param_groups[0]["lr"] == frozen


def test_loading_a_state_saved_without_warmup_says_so():
    _, plain = build(optim_cfg(WARMUP_EPOCH=-1))
    _, warm = build(optim_cfg())
    with pytest.raises(KeyError, match="successor"):
        warm.load_state_dict(plain.state_dict())


def test_sgd_settings_from_config():
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], optim_cfg())
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["dampening"],
            group["nesterov"]) == (0.002, 0.9, 5e-4, 0, False)

    cfg = optim_cfg(MOMENTUM=0.8, WEIGHT_DECAY=0.0, SGD_NESTEROV=True)
    group = build_optimizer([nn.Parameter(torch.zeros(1))], cfg).param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.8, 0.0, True)


@pytest.mark.parametrize("name, cls, expected", [
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.99), "amsgrad": False}),
    ("amsgrad", torch.optim.Adam, {"betas": (0.8, 0.99), "amsgrad": True}),
    ("rmsprop", torch.optim.RMSprop, {"alpha": 0.95, "momentum": 0.9}),
    ("radam", torch.optim.RAdam, {"betas": (0.8, 0.99), "decoupled_weight_decay": True}),
    ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.99)}),
])
def test_other_optimizers_take_their_settings(name, cls, expected):
    cfg = optim_cfg(NAME=name, ADAM_BETA1=0.8, ADAM_BETA2=0.99, RMSPROP_ALPHA=0.95,
                    WEIGHT_DECAY=1e-3)
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.002, 1e-3)
    assert {key: group[key] for key in expected} == expected


def test_radam_steps_like_dassls_radam():
    """Dassl's RAdam: decoupled decay, momentum SGD until rho_t >= 5, then the rectified step."""
    lr, wd, b1, b2, eps = 1e-2, 0.05, 0.9, 0.999, 1e-8
    start = torch.linspace(-2.0, 3.0, 7, dtype=torch.float64)
    param = nn.Parameter(start.clone())
    optimizer = build_optimizer([param], optim_cfg(NAME="radam", LR=lr, WEIGHT_DECAY=wd))

    p, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, 13):
        param.grad = param.detach() - 1.0
        optimizer.step()
        grad = p - 1.0
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        p = p * (1 - lr * wd)
        if rho >= 5:
            rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p = p - lr * rect * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
        else:
            p = p - lr / (1 - b1 ** t) * m
    torch.testing.assert_close(param.detach(), p, rtol=1e-9, atol=1e-12)


def test_module_gives_all_its_parameters_frozen_included():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    optimizer = build_optimizer(model, optim_cfg())
    assert len(optimizer.param_groups[0]["params"]) == 4


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.backbone = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        self.head = nn.Linear(3, 2)


def test_staged_lr_groups_direct_children():
    model = Net()
    cfg = optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base, new = build_optimizer(model, cfg).param_groups
    assert base["lr"] == pytest.approx(0.0002) and new["lr"] == 0.002
    assert {id(p) for p in new["params"]} == {id(p) for p in model.head.parameters()}
    expected_base = [model.scale, *model.backbone.parameters()]
    assert {id(p) for p in base["params"]} == {id(p) for p in expected_base}


def test_staged_lr_warns_about_names_that_are_not_direct_children():
    cfg = optim_cfg(STAGED_LR=True, NEW_LAYERS=("backbone.0",))
    with pytest.warns(UserWarning, match=r"backbone\.0.*direct child.*backbone, head"):
        base, new = build_optimizer(Net(), cfg).param_groups
    assert new["params"] == [] and len(base["params"]) == 7


def test_staged_lr_needs_a_module():
    cfg = optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",))
    with pytest.raises(TypeError, match="STAGED_LR needs an nn.Module"):
        build_optimizer([nn.Parameter(torch.zeros(1))], cfg)


def test_explicit_param_groups_are_used_as_given():
    model = Net()
    groups = [{"params": list(model.backbone.parameters()), "lr": 0.5},
              {"params": list(model.head.parameters())}]
    cfg = optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",))
    with pytest.warns(UserWarning, match="STAGED_LR is ignored"):
        optimizer = build_optimizer(model, cfg, param_groups=groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.002]
    assert len(optimizer.param_groups[0]["params"]) == 4


@pytest.mark.parametrize("key, value, builder, fragment", [
    ("NAME", "adma", "optimizer", "OPTIM.NAME must be one of adam, amsgrad, sgd, rmsprop, "
                                  "radam, adamw; got 'adma'. Did you mean 'adam'?"),
    ("LR_SCHEDULER", "cosin", "scheduler",
     "OPTIM.LR_SCHEDULER must be one of single_step, multi_step, cosine; got 'cosin'. "
     "Did you mean 'cosine'?"),
    ("WARMUP_TYPE", "exp", "scheduler",
     "OPTIM.WARMUP_TYPE must be one of constant, linear; got 'exp'"),
])
def test_unknown_names_are_rejected_with_the_choices(key, value, builder, fragment):
    cfg = optim_cfg(**{key: value})
    param = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError) as error:
        if builder == "optimizer":
            build_optimizer([param], cfg)
        else:
            build_lr_scheduler(torch.optim.SGD([param], lr=0.1), cfg)
    assert fragment in str(error.value)
