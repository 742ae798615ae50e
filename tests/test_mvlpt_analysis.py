"""MVLPT's result reader (paper tables, best-M groups, Table 5 groups) and the transferability map,
on results.json files laid out as the MVLPT scripts write them."""
import csv
import json
import os
import subprocess
import sys

import pytest

from trainers.analysis import mvlpt_tables, mvlpt_transfer


def write_result(folder, datasets, metrics=None, per_task=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"datasets": datasets, "metrics": metrics or {}, "per_task": per_task or {}}, f)


def run(root, kind, tasks, method, seed):
    return os.path.join(root, kind, tasks, method, "vit_b16_20shots", "nctx4", f"seed{seed}")


def test_tables_average_seeds_per_task_metric_and_pick_the_better_group(tmp_path, capsys):
    root = str(tmp_path)
    for seed, (cifar, voc) in enumerate([(60.0, 40.0), (70.0, 50.0)], start=1):
        write_result(run(root, "few_shot", "cifar-10", "UPT", seed), ["cifar-10"], {"accuracy": cifar})
        write_result(run(root, "few_shot", "voc-2007-classification", "UPT", seed), ["voc-2007-classification"],
                     {"accuracy": 99.0, "11point_mAP": voc})  # VOC is scored by its mAP
        group2 = {"cifar-10": {"accuracy": cifar + 1}, "mnist": {"accuracy": 10.0}}
        write_result(run(root, "few_shot", "cifar-10,mnist", "UPT", seed), ["cifar-10", "mnist"], per_task=group2)
        group3 = {"cifar-10": {"accuracy": cifar - 1}, "mnist": {"accuracy": 10.0}, "dtd": {"accuracy": 1.0}}
        write_result(run(root, "few_shot", "cifar-10,mnist,dtd", "UPT", seed), ["cifar-10", "dtd", "mnist"],
                     per_task=group3)
    os.makedirs(run(root, "few_shot", "mnist", "UPT", 1))  # an unfinished run is skipped
    scores = mvlpt_tables.collect(root)
    mvlpt_tables.add_best_m(scores)
    setting = "vit_b16_20shots/nctx4"
    assert scores[("few_shot", "UPT", setting)]["voc-2007-classification"] == {1: 40.0, 2: 50.0}
    assert scores[("few_shot", "UPT best M", setting)]["cifar-10"] == {1: 61.0, 2: 71.0}
    rows = {r[0]: r[1:] for r in mvlpt_tables.table_rows(scores, "few_shot", setting,
                                                           ["cifar-10", "voc-2007-classification"])}
    assert rows["UPT"] == ["65.0 +- 5.0", "45.0 +- 5.0", "55.0"]
    assert rows["UPT best M"][0] == "66.0 +- 5.0" and rows["UPT M3"][0] == "64.0 +- 5.0"
    fractions = mvlpt_tables.table_rows(scores, "few_shot", setting, ["cifar-10"], fractions=True)
    assert fractions[0][1:] == ["0.650 +- 0.050", "0.650"]

    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"few_shot": {"20": {"UPT": {"cifar-10": 93.5, "mean": None}, "VPT": {}}}}))
    assert mvlpt_tables.main([root, "--csv", str(tmp_path / "t.csv"), "--paper", str(paper)]) == 0
    out = capsys.readouterr().out
    assert "paper: UPT" in out and "93.5" in out and "paper: VPT" not in out
    with open(tmp_path / "t.csv") as f:
        table = list(csv.reader(f))
    assert table[0][:3] == ["few_shot", setting, "method"] and ["few_shot", setting, "UPT"] == table[1][:3]


def test_table5_groups_come_from_the_paper_data():
    assert mvlpt_tables.table5_group("UPT", "kitti-distance", 3) == ["kitti-distance", "food-101",
                                                                      "oxford-flower-102"]
    assert mvlpt_tables.table5_group("CoOp", "cifar-10", 2) == ["cifar-10", "voc-2007-classification"]
    with pytest.raises(KeyError, match="sizes 2 or 3"):
        mvlpt_tables.table5_group("MUPT", "cifar-10", 2)
    with open(mvlpt_tables.GROUPS_FILE) as f:
        partners = json.load(f)["partners"]
    assert all(len(p) == 20 and all(len(v) == 2 and t not in v for t, v in p.items()) for p in partners.values())


def test_the_transfer_map_is_normalised_by_the_best_source_per_target(tmp_path, capsys):
    root = str(tmp_path)
    scores = {("a", "a"): [80.0, 60.0], ("a", "b"): [10.0], ("b", "a"): [35.0], ("b", "b"): [40.0]}
    names = {"a": "cifar-10", "b": "mnist"}
    for (source, target), values in scores.items():
        for seed, value in enumerate(values, start=1):
            write_result(os.path.join(root, names[source], names[target], f"seed{seed}"), [names[target]],
                         {"accuracy": value})
    tasks, matrix = mvlpt_transfer.collect_matrix(root)
    assert tasks == ["cifar-10", "mnist"] and matrix["cifar-10"]["cifar-10"] == 70.0
    normalised = mvlpt_transfer.normalise_per_target(tasks, matrix)
    assert normalised["cifar-10"]["cifar-10"] == 1.0 and normalised["mnist"]["cifar-10"] == 0.5
    assert normalised["cifar-10"]["mnist"] == 0.25 and normalised["mnist"]["mnist"] == 1.0
    assert mvlpt_transfer.main([root]) == 0
    with open(os.path.join(root, "transfer_normalised.csv")) as f:
        assert list(csv.reader(f)) == [["source \\ target", "cifar-10", "mnist"], ["cifar-10", "1.0000", "0.2500"],
                                       ["mnist", "0.5000", "1.0000"]]
    assert mvlpt_transfer.main([str(tmp_path / "empty")]) == 1


# ----- the scripts' wiring (train.py replaced by a recorder that writes a results.json) ------------------

FAKE_PYTHON = """#!{python}
import json, os, sys
argv = sys.argv[1:]
if argv[0] != "train.py":
    os.execv({python!r}, [{python!r}] + argv)
with open(os.environ["CALLS"], "a") as f:
    f.write(" ".join(argv) + "\\n")
out, names = argv[argv.index("--output-dir") + 1], argv[argv.index("--dataset") + 1].split(",")
os.makedirs(out, exist_ok=True)
score = 10.0 * len(out) % 97
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({{"datasets": names, "metrics": {{"accuracy": score}},
               "per_task": {{n: {{"accuracy": score}} for n in names}} if len(names) > 1 else {{}}}}, f)
"""


def run_script(tmp_path, script, *args, **env):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    environment = dict(os.environ, PYTHON=str(fake), CALLS=str(calls), SEEDS="1", OUTPUT=str(tmp_path / "out"),
                       PYTHONPATH=repo, **env)
    done = subprocess.run(["bash", os.path.join("scripts", "mvlpt", script), *args], cwd=repo, env=environment,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return calls.read_text().splitlines(), done.stdout


@pytest.mark.slow
def test_few_shot_runs_the_table5_group_of_each_task_and_evaluates_every_tasks_best(tmp_path):
    calls, _ = run_script(tmp_path, "few_shot.sh", "VPT", "vit_b16", "16", "20", TASKS="gtsrb kitti-distance",
                          GROUP_SIZE="3")
    groups = [c.split("--dataset ")[1].split()[0] for c in calls if "--eval-only" not in c]
    assert groups == ["gtsrb,mnist,cifar-100", "kitti-distance,voc-2007-classification,oxford-flower-102"]
    best = [c for c in calls if "--eval-only" in c]
    assert len(best) == 6 and all("--multi-task" in c and "best_per_task/" in c for c in best)
    assert all("TRAINER.MVLPT.SAVE_BEST_PER_TASK True" in c for c in calls if "--eval-only" not in c)


@pytest.mark.slow
def test_the_transferability_script_evaluates_every_prompt_on_every_task_and_draws_the_map(tmp_path):
    calls, out = run_script(tmp_path, "transferability.sh", "CoOp", "vit_b16", "16", "20", TASKS="cifar-10 mnist")
    evals = [c for c in calls if "--eval-only" in c]
    assert len(calls) == 6 and len(evals) == 4
    assert any("--dataset mnist --eval-only --model-dir" in c and "few_shot/cifar-10/CoOp" in c for c in evals)
    folder = tmp_path / "out" / "transfer" / "CoOp" / "vit_b16_20shots" / "nctx16"
    assert (folder / "transfer_normalised.csv").is_file() and "Wrote transfer_raw.csv" in out
