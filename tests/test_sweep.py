"""The sweep launcher: shipped sweeps equal the bash scripts' commands; pool, failures, skips, tables; real runs."""
import glob
import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from trainers import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(glob.glob(os.path.join(REPO, "configs", "sweeps", "*.yaml")))


def dry_run(capsys, sweep_file, *args):
    """The dry run's commands, each as train.py's argument list."""
    assert sweep.main([sweep_file, "--dry-run", "--root", "/data", *args]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]
    return [shlex.split(line)[2:] for line in lines]


def script_commands(tmp_path, script, *args, **env):
    """What a bash script would run (PYTHON=echo prints each train.py command instead of running it)."""
    environ = dict(os.environ, PYTHON="echo", DATA="/data", SEEDS=env.pop("SEEDS", "1"), EXTRA_OPTS="", **env)
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", script), *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("train.py ")]


def as_train_args(argv):
    """What train.py makes of a command line (flag order aside), comparable and sortable."""
    import train
    return sorted((k, repr(v)) for k, v in vars(train.build_parser().parse_args(argv)).items())


def test_every_shipped_sweep_expands_to_existing_config_files(capsys):
    assert len(SWEEPS) >= 10
    for path in SWEEPS:
        for argv in dry_run(capsys, path):
            for flag in ("--config-file", "--dataset-config-file"):
                if flag in argv:
                    assert os.path.isfile(os.path.join(REPO, argv[argv.index(flag) + 1])), (path, argv)


ADAPT_TTARGETS = [("adapt/main.sh", "dtd", t, "snip") for t in ("256", "128", "64", "32", "16")]
SCRIPT_EQUIVALENTS = [
    ("coop_fewshot", ["dataset=dtd"], [("coop/main.sh", "dtd", cfg, "end", "16", shots, "False") for cfg, shots in
                                       [("rn50_ep50", "1"), ("rn50_ep50", "2"), ("rn50_ep100", "4"),
                                        ("rn50_ep100", "8"), ("rn50", "16")]], {}),
    ("zeroshot_clip", ["dataset=dtd", "cfg=rn50"], [("coop/zeroshot.sh", "dtd", "rn50")], {}),
    ("cocoop_base2new", ["dataset=dtd"], [("cocoop/base2new_train.sh", "dtd", "1"),
                                          ("cocoop/base2new_test.sh", "dtd", "1")], {}),
    ("cocoop_xd", [], [("cocoop/xd_train.sh", "1")] + [("cocoop/xd_test.sh", t, "1") for t in (
        "caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101 "
        "imagenetv2 imagenet_sketch imagenet_a imagenet_r").split()], {}),
    ("kgcoop_base2new", ["dataset=eurosat"], [("kgcoop/base2new_train.sh", "eurosat", "1"),
                                              ("kgcoop/base2new_test.sh", "eurosat", "1")], {}),
    ("maple_base2new", ["dataset=ucf101"], [("maple/base2new_train_maple.sh", "ucf101", "1"),
                                            ("maple/base2new_test_maple.sh", "ucf101", "1")], {}),
    ("dept_coop_base2new", ["dataset=oxford_pets"],
     [("dept/base2new.sh", "ExtrasLinearProbeCoOp", "vit_b16_ep10_bs4_lr35", "oxford_pets")], {}),
    ("dept_coop_xd", [], [("dept/xd.sh", "ExtrasLinearProbeCoOp", "vit_b16_ep10_bs4_lr35")], {}),
    ("mvlpt_fewshot", ["dataset=dtd"], [("mvlpt/few_shot.sh", "CoOp", "vit_b16", "16", "20"),
                                        ("mvlpt/few_shot.sh", "VPT", "vit_b16", "16", "20"),
                                        ("mvlpt/few_shot.sh", "UPT", "vit_b16", "4", "20")], {"TASKS": "dtd"}),
    ("softcpt_general10", ["shots=4"], [("softcpt/main.sh", "general10", "rn50_ep50", "4", v) for v in ("NATA", "NATS")]
     + [("softcpt/hard.sh", "general10", "rn50_ep50", "4", b) for b in ("CoOp-MT", "CoOp-CA", "CoOp-CS")], {}),
    ("adapt_table1", ["dataset=dtd"], [("adapt/main.sh", "dtd", t, "snip") for t in ("128", "32")], {}),
    ("adapt_ttarget", ["dataset=dtd"], ADAPT_TTARGETS, {}),
]


@pytest.mark.parametrize("name,sets,scripts,env", SCRIPT_EQUIVALENTS, ids=[c[0] for c in SCRIPT_EQUIVALENTS])
def test_shipped_sweep_runs_what_the_bash_scripts_run(name, sets, scripts, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seeds = [] if name == "zeroshot_clip" else ["seed=1"]  # zero-shot CLIP passes no seed
    ours = dry_run(capsys, os.path.join(REPO, "configs", "sweeps", f"{name}.yaml"), *[f"--set={s}" for s in sets + seeds])
    theirs = [cmd for script in scripts for cmd in script_commands(tmp_path, *script, **env)]
    if name == "adapt_ttarget":  # sweep_ttarget.sh's T 512 run
        theirs += script_commands(tmp_path, "adapt/main.sh", "dtd", "512", "snip", MAX_CTX="32")
    assert len(ours) == len(theirs)
    assert sorted(map(as_train_args, ours)) == sorted(map(as_train_args, theirs))


# ------------------------------------------------------------------ the executors, with a stand-in train.py

STUB = textwrap.dedent("""\
    #!{python}
    # Stands in for "python train.py ...": records when and where it ran; control.json (by output folder) says
    # how long it sleeps and whether it fails.
    import json, os, sys, time
    argv = sys.argv[2:]
    out = argv[argv.index("--output-dir") + 1]
    control = json.load(open("control.json")).get(out, {{}}) if os.path.exists("control.json") else {{}}
    os.makedirs(out, exist_ok=True)
    start = time.time()
    time.sleep(control.get("sleep", 0.1))
    record = dict(start=start, end=time.time(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), argv=argv)
    with open(os.path.join(out, "record.json"), "w") as f:
        json.dump(record, f)
    if control.get("fail"):
        print("Error: the stand-in was told to fail")
        sys.exit(3)
    accuracy = 80.0 if "base" in argv else 60.0
    with open(os.path.join(out, "log.txt"), "w") as f:
        f.write("=> result\\n* accuracy: %.1f%%\\n" % accuracy)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(dict(metrics=dict(accuracy=accuracy)), f)
""")

STUB_SWEEP = textwrap.dedent("""\
    grid:
      trainer: [Stub]
      cfg: [c]
      dataset: [a, b]
      seed: [1, 2]
    steps:
      - name: train
        output: out/train_base/{dataset}/shots_4/{trainer}/{cfg}/seed{seed}
        opts: [base]
      - name: test
        after: train
        output: out/test_new/{dataset}/shots_4/{trainer}/{cfg}/seed{seed}
        args: [--model-dir, "{model_dir}", --eval-only]
        opts: [new]
    table: {base: train, new: test}
""")
SLOW_RUN = "out/train_base/a/shots_4/Stub/c/seed1"
FAILING_RUN = "out/train_base/b/shots_4/Stub/c/seed2"


@pytest.fixture
def stub_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stub = tmp_path / "fake-python"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    (tmp_path / "stub.yaml").write_text(STUB_SWEEP)
    (tmp_path / "control.json").write_text(json.dumps({SLOW_RUN: {"sleep": 3}, FAILING_RUN: {"fail": True}}))
    return str(stub), str(tmp_path / "stub.yaml")


def records(root):
    found = {}
    for path in glob.glob(os.path.join(root, "out", "*", "*", "shots_4", "Stub", "c", "seed*", "record.json")):
        with open(path) as f:
            found[os.path.relpath(os.path.dirname(path), os.path.join(root, "out"))] = json.load(f)
    return found


def test_local_pool_starts_runs_as_slots_free_and_reports_failures_and_skips(stub_sweep, tmp_path, capsys):
    stub, sweep_file = stub_sweep
    assert sweep.main([sweep_file, "--python", stub, "--gpus", "0,1", "--csv", "table.csv"]) == 1
    out = capsys.readouterr().out
    ran = records(str(tmp_path))
    assert len(ran) == 7  # the failed training's test run never starts
    slow = ran[os.path.join("train_base", "a", "shots_4", "Stub", "c", "seed1")]
    # a pool, not waves of two: runs start on the second GPU while the slow one still trains
    assert sum(r["start"] < slow["end"] for r in ran.values()) >= 3
    assert {r["gpu"] for r in ran.values()} == {"0", "1"}
    for a in ran.values():  # no GPU runs two things at once
        for b in ran.values():
            if a is not b and a["gpu"] == b["gpu"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"]
    assert "Runs: 0 finished, 6 done, 1 failed, 1 skipped" in out
    assert "FAILED (exit 3): out/train_base/b/shots_4/Stub/c/seed2" in out
    assert "| Error: the stand-in was told to fail" in out
    assert "SKIPPED: out/test_new/b/shots_4/Stub/c/seed2 (train run out/train_base/b/shots_4/Stub/c/seed2 failed)" in out
    # base2new_table's rows: a has both seeds (base 80, new 60), b only seed 1
    assert "Stub / c / " in out and "a          80.00   60.00  68.57  1,2" in out
    assert "b: seed(s) 2 lack a base or new accuracy" in out
    assert open("table.csv").read().splitlines()[1].startswith("dataset,base_acc_seed1")

    # a second invocation runs only the failed run (and then its test run, once it succeeds)
    (tmp_path / "control.json").write_text("{}")
    assert sweep.main([sweep_file, "--python", stub, "--jobs", "2", "--gpus", "none", "--csv", "table.csv"]) == 0
    out = capsys.readouterr().out
    assert "8 run(s) in" in out and "6 finished, 2 to run" in out
    rerun = {k: r for k, r in records(str(tmp_path)).items() if r["end"] > max(x["end"] for x in ran.values())}
    assert set(rerun) == {os.path.join(step, "b", "shots_4", "Stub", "c", "seed2") for step in ("train_base", "test_new")}
    assert all(r["gpu"] is None for r in rerun.values())  # --gpus none: CPU slots, no device set


def test_sweep_file_mistakes_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {trainer: [CoOp]}\nsteps:\n  - {name: train, output: 'out/{datset}'}\n")
    assert sweep.main([str(bad), "--dry-run"]) == 2
    assert "uses {datset}, which no axis or var defines" in capsys.readouterr().err
    bad.write_text("grid: {trainer: [CoOp]}\nsteps:\n  - {name: test, after: train, output: out}\n")
    assert sweep.main([str(bad), "--dry-run"]) == 2
    assert "'after: train' names no earlier step" in capsys.readouterr().err
    bad.write_text("grid: {trainer: [CoOp], cfg: [c], dataset: [d], seed: [1, 2]}\nsteps:\n  - {name: train, output: out}\n")
    assert sweep.main([str(bad), "--dry-run"]) == 2
    assert "two different commands write out" in capsys.readouterr().err


def test_dry_run_prints_the_commands_and_marks_finished_runs(stub_sweep, tmp_path, capsys):
    _, sweep_file = stub_sweep
    done = tmp_path / "out" / "train_base" / "a" / "shots_4" / "Stub" / "c" / "seed1"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    assert sweep.main([sweep_file, "--dry-run", "--root", "/data"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("# finished: python train.py --output-dir out/train_base/a/shots_4/Stub/c/seed1 --root /data "
                        "--seed 1 --trainer Stub --dataset-config-file configs/datasets/a.yaml "
                        "--config-file configs/trainers/Stub/c.yaml base")
    assert lines[1] == ("python train.py --output-dir out/test_new/a/shots_4/Stub/c/seed1 --root /data --seed 1 "
                        "--trainer Stub --dataset-config-file configs/datasets/a.yaml --config-file "
                        "configs/trainers/Stub/c.yaml --model-dir out/train_base/a/shots_4/Stub/c/seed1 --eval-only new")
    assert lines[-1] == "# 8 run(s), 1 finished"
    assert not (tmp_path / "out" / "test_new").exists()


# ------------------------------------------------------------------------ real runs (tiny CLIP, Synthetic)

TINY_SWEEP = textwrap.dedent("""\
    vars: {shots: 2, epochs: 1}
    grid:
      trainer: [CoOp]
      cfg: [tiny_vit_b16_ep10]
      dataset: [synthetic]
      seed: [1, 2]
      nctx: [2, 4]
    exclude: [{seed: 2, nctx: 4}]
    include: [{trainer: CoOp, cfg: tiny_vit_b16_ep10, dataset: synthetic, seed: 2, nctx: 4, epochs: one}]
    steps:
      - name: train
        output: output/{dataset}/{trainer}/{cfg}_{shots}shots/nctx{nctx}_cscFalse_ctpend/seed{seed}
        opts: [TRAINER.COOP.N_CTX, "{nctx}", DATASET.NUM_SHOTS, "{shots}", OPTIM.MAX_EPOCH, "{epochs}"]
""")


@pytest.fixture
def repo_like(tmp_path, monkeypatch):
    """A folder like the repository root (the sweep's paths are relative to it)."""
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_local_executor_trains_a_2x2_grid_with_one_failing_run_then_skips_the_finished(repo_like, data_root, capsys):
    (repo_like / "tiny.yaml").write_text(TINY_SWEEP)
    assert sweep.main(["tiny.yaml", "--root", data_root, "--jobs", "2", "--gpus", "none"]) == 1
    out = capsys.readouterr().out
    runs = repo_like / "output" / "synthetic" / "CoOp" / "tiny_vit_b16_ep10_2shots"
    assert "Runs: 0 finished, 3 done, 1 failed, 0 skipped" in out
    assert f"FAILED (exit 2): {os.path.join('output', 'synthetic', 'CoOp', 'tiny_vit_b16_ep10_2shots')}" in out
    assert "| Error: Config key \"OPTIM.MAX_EPOCH\" (from command line) expects int" in out
    for finished in ("nctx2_cscFalse_ctpend/seed1", "nctx2_cscFalse_ctpend/seed2", "nctx4_cscFalse_ctpend/seed1"):
        assert (runs / finished / "results.json").is_file()
    assert not (runs / "nctx4_cscFalse_ctpend" / "seed2" / "results.json").exists()
    csv_lines = (repo_like / "output" / "sweeps" / "tiny.csv").read_text().splitlines()
    assert csv_lines[0] == "step,setting,dataset,n,mean,std,seeds"
    assert any(",synthetic,2," in line and "nctx=2" in line and line.endswith(",1 2") for line in csv_lines)

    assert sweep.main(["tiny.yaml", "--root", data_root, "--jobs", "2", "--gpus", "none"]) == 1
    out = capsys.readouterr().out
    assert "4 run(s) in tiny.yaml: 3 finished, 1 to run" in out
    assert not list((runs / "nctx2_cscFalse_ctpend" / "seed1").glob("log.txt-*"))  # not run again


@pytest.mark.slow
def test_submitit_debug_executor_runs_base_to_new_and_prints_the_h_table(repo_like, data_root, capsys):
    pytest.importorskip("submitit")
    (repo_like / "b2n.yaml").write_text(textwrap.dedent("""\
        vars: {shots: 2}
        grid: {trainer: [CoOp], cfg: [tiny_vit_b16_ep10], dataset: [synthetic], seed: [1]}
        defaults:
          opts: [TRAINER.COOP.N_CTX, "2", DATASET.NUM_SHOTS, "{shots}", OPTIM.MAX_EPOCH, "1"]
        steps:
          - name: train
            output: output/base2new/train_base/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}
            opts: [DATASET.SUBSAMPLE_CLASSES, base]
          - name: test
            after: train
            output: output/base2new/test_new/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}
            args: [--model-dir, "{model_dir}", --load-epoch, "1", --eval-only]
            opts: [DATASET.SUBSAMPLE_CLASSES, new]
        table: {base: train, new: test}
        slurm: {partition: gpu, time: "0:30:00", gpus: 0, array_parallelism: 2}
    """))
    code = sweep.main(["b2n.yaml", "--root", data_root, "--executor", "slurm", "--cluster", "debug"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Runs: 0 finished, 2 done, 0 failed, 0 skipped" in out
    new_log = repo_like / "output/base2new/test_new/synthetic/shots_2/CoOp/tiny_vit_b16_ep10/seed1/log.txt"
    assert "SUBSAMPLE NEW CLASSES!" in new_log.read_text()
    assert "CoOp / tiny_vit_b16_ep10 / shots=2" in out and "average" in out
    assert (repo_like / "output" / "sweeps" / "b2n.csv").read_text().startswith("# CoOp / tiny_vit_b16_ep10")


def test_slurm_time_formats():
    assert [sweep._minutes(t) for t in (90, "90", "2:30", "1:00:00", "1-12", "1-0:30")] == [90, 90, 3, 60, 2160, 1470]


def test_a_preempted_slurm_job_stops_its_run_for_resuming_and_requeues_the_same_command(tmp_path):
    pytest.importorskip("submitit")
    import pickle
    import threading
    import time

    marker = tmp_path / "stopped"
    script = ("import signal, sys, time\n"
              "def stop(*_):\n"
              f"    open({str(marker)!r}, 'w').write('saved')\n"
              "    sys.exit(143)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "print('READY'.lower(), flush=True)\n"
              "time.sleep(60)\n")
    job = sweep.SweepJob([sys.executable, "-c", script], str(tmp_path / "run"))
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", job()))
    thread.start()
    log, deadline = tmp_path / "run" / "sweep.log", time.time() + 30
    while not (log.exists() and "\nready\n" in log.read_text()):  # the run is under way
        assert time.time() < deadline
        time.sleep(0.05)
    resubmission = job.checkpoint()  # what submitit calls on preemption or time-out, before requeueing
    thread.join(30)
    assert marker.read_text() == "saved" and result["code"] == 143  # train.py's SIGTERM path: checkpoint, exit
    again = pickle.loads(pickle.dumps(resubmission.function))
    assert again.argv == job.argv and again.output == job.output


def test_gpus_per_run_groups_the_gpus_and_launches_each_run_through_torchrun():
    args = sweep.build_parser().parse_args(["s.yaml", "--gpus", "0,1,2,3,4"])
    assert sweep._local_slots(args, 2) == ["0,1", "2,3"]  # the odd GPU out is left idle
    assert sweep._local_slots(args, 1) == ["0", "1", "2", "3", "4"]
    with pytest.raises(sweep.InvalidInputError, match="needs at least 8 GPUs"):
        sweep._local_slots(args, 8)
    run = sweep.Run(step="train", variables={}, output="out", argv=["--seed", "1"])
    assert run.command("py", "train.py") == ["py", "train.py", "--seed", "1"]
    assert run.command("py", "train.py", 2) == ["py", "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node=2", "train.py", "--seed", "1"]
