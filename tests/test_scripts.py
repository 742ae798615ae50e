"""The bash scripts run from a repository-like folder, write CoOp's output layout, and skip finished runs."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test runs the bash scripts, which run train.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def workdir(tmp_path, data_root, isolated_clip_cache):
    """A folder that looks like the repository root (the scripts use relative paths)."""
    for name in ("configs", "scripts", "train.py", "parse_test_res.py"):
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    env = dict(os.environ, DATA=data_root, SEEDS="1", PYTHON=sys.executable, PYTHONPATH=REPO,
               VLPROMPT_CLIP_CACHE=isolated_clip_cache)
    return tmp_path, env


def bash(workdir, *args, extra=""):
    folder, env = workdir
    env = dict(env, EXTRA_OPTS=extra)
    return subprocess.run(["bash", *args], cwd=folder, env=env, capture_output=True, text=True)


def test_coop_main_writes_coop_layout_then_skips_the_finished_run(workdir):
    args = ("scripts/coop/main.sh", "synthetic", "tiny_vit_b16_ep10", "end", "4", "2", "False")
    run = bash(workdir, *args, extra="OPTIM.MAX_EPOCH 1")
    assert run.returncode == 0, run.stderr[-2000:]
    out = workdir[0] / "output/synthetic/CoOp/tiny_vit_b16_ep10_2shots/nctx4_cscFalse_ctpend/seed1"
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file() and (out / "results.json").is_file()
    again = bash(workdir, *args, extra="OPTIM.MAX_EPOCH 1")
    assert again.returncode == 0 and "Oops! The results exist at" in again.stdout

    parsed = subprocess.run([sys.executable, "parse_test_res.py", str(out.parent)], cwd=workdir[0],
                            env=workdir[1], capture_output=True, text=True)
    assert parsed.returncode == 0 and "Summary of directory" in parsed.stdout


def test_cocoop_base_to_new_scripts_chain_through_the_checkpoint(workdir):
    extra = "OPTIM.MAX_EPOCH 1 DATASET.NUM_SHOTS 2"
    env_cfg = dict(workdir[1], CFG="tiny_vit_b16_c4_ep2_batch4", LOADEP="1")
    train = subprocess.run(["bash", "scripts/cocoop/base2new_train.sh", "synthetic", "1"], cwd=workdir[0],
                           env=dict(env_cfg, EXTRA_OPTS=extra), capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-2000:]
    test = subprocess.run(["bash", "scripts/cocoop/base2new_test.sh", "synthetic", "1"], cwd=workdir[0],
                          env=dict(env_cfg, EXTRA_OPTS=extra), capture_output=True, text=True)
    assert test.returncode == 0, test.stderr[-2000:]
    log = (workdir[0] / "output/base2new/test_new/synthetic/shots_16/CoCoOp/tiny_vit_b16_c4_ep2_batch4/seed1/log.txt")
    assert "SUBSAMPLE NEW CLASSES!" in log.read_text() and "* accuracy:" in log.read_text()
