"""Run a paper's grid of train.py runs from one YAML file, on local CPUs/GPUs or on SLURM (submitit).

    python -m trainers.sweep configs/sweeps/cocoop_base2new.yaml [--dry-run] [--executor local|slurm]
        [--jobs N] [--gpus 0,1|all] [--gpus-per-run N] [--set AXIS=v1,v2 ...] [--extra-opts "KEY VALUE ..."]

A sweep file (``configs/sweeps/*.yaml``)::

    vars: {shots: 16, loadep: 10}             # constants, usable in every template
    grid:                                     # the product of these axes is the list of points
      trainer: [CoCoOp]
      cfg: [vit_b16_c4_ep10_batch1_ctxv1]
      dataset: [caltech101, dtd]
      seed: [1, 2, 3]
      # a list of mappings sets several variables together: [{variant: NATA, csc: False}, ...]
    include: [{...}]                          # extra points (over vars), exclude: [{...}] drops matching ones
    defaults: {opts: [...], args: [...]}      # prepended to every step's opts/args
    steps:
      - name: train
        output: output/base2new/train_base/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}
        opts: [DATASET.NUM_SHOTS, "{shots}", DATASET.SUBSAMPLE_CLASSES, base]
      - name: test
        after: train                          # runs once the same point's train step finished;
        output: output/base2new/test_new/...  # {model_dir} is that step's output folder
        args: [--model-dir, "{model_dir}", --load-epoch, "{loadep}", --eval-only]
        grid: {dataset: [...]}                # optional: this step's own values for some axes
    table: {base: train, new: test}           # base/new/H table; default: mean ± std per step
    gpus_per_run: 1                           # > 1: every run is one torchrun over that many GPUs

Each step becomes, per point, the command the bash scripts run (``scripts/common.sh``)::

    python train.py --output-dir OUT --root DATA --seed SEED --trainer TRAINER
        --dataset-config-file configs/datasets/DATASET.yaml --config-file configs/trainers/TRAINER/CFG.yaml
        ARGS OPTS EXTRA_OPTS

(``dataset_config``/``config`` templates change or, set to null, drop those flags; a point without a
``seed`` passes none). Paths are relative to the folder the sweep runs in (the repository root,
like the scripts). A run whose folder holds ``results.json`` is finished and skipped; an unfinished
one runs again and train.py resumes it; a failed run is reported with its log tail and does not
stop the others, and the runs after it are skipped. Each run's console output is appended to
``<output>/sweep.log``.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import signal
import string
import subprocess
import sys
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml
from tabulate import tabulate
from tqdm import tqdm

from clip.errors import InvalidInputError, MissingInputError, UserInputError
from datasets.io import atomic_write_text
from parse_test_res import TEST_END_SIGNALS, TRAIN_END_SIGNALS, parse_run
from trainers.analysis.base2new_table import Setting, SettingRuns, dept_csv, format_table, read_accuracy, table_rows
from trainers.engine.results import summarize

__all__ = ["Run", "load_sweep", "expand", "run_local", "run_submitit", "results_table", "main"]

#: train.py of this installation (the repository root, or vlprompt/_src of an installed package)
TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
RUN_LOG = "sweep.log"
_STEP_KEYS = {"name", "output", "after", "grid", "args", "opts", "config", "dataset_config"}
_TOP_KEYS = {"vars", "grid", "include", "exclude", "defaults", "steps", "table", "data", "slurm", "csv",
              "gpus_per_run"}
_SLURM_KEYS = {"partition", "time", "gpus", "cpus", "mem_gb", "array_parallelism", "max_requeue", "account",
               "qos", "constraint", "additional"}
_DEFAULT_CONFIG = "configs/trainers/{trainer}/{cfg}.yaml"
_DEFAULT_DATASET_CONFIG = "configs/datasets/{dataset}.yaml"


@dataclass
class Run:
    """One train.py invocation of a sweep: its step, variables, output folder and command."""

    step: str
    variables: Dict[str, Any]
    output: str
    argv: List[str]                      # train.py's arguments (without the interpreter and script)
    after: Optional["Run"] = None        # the run that must finish first (a test run's training)
    status: str = "pending"              # pending | running | done | failed | skipped | finished (already before)
    returncode: Optional[int] = None
    note: str = ""

    def command(self, python: str = "python", script: str = "train.py", processes: int = 1) -> List[str]:
        """The run's command line; with ``processes`` > 1 one run over that many processes
        (GPUs) through torchrun (``python -m torch.distributed.run --standalone``)."""
        if processes > 1:
            return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                    script] + self.argv
        return [python, script] + self.argv

    @property
    def finished(self) -> bool:
        return os.path.isfile(os.path.join(self.output, "results.json"))


# ----------------------------------------------------------------------------------------- the file


def load_sweep(path: str) -> Dict[str, Any]:
    """Read and check a sweep file (unknown keys are errors naming the key)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"Sweep file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            spec = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"Sweep file {path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidInputError(f"Sweep file {path}: expected a mapping at the top level")
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise InvalidInputError(f"Sweep file {path}: unknown key(s) {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidInputError(f"Sweep file {path}: 'steps' must be a non-empty list of steps")
    names = set()
    for i, step in enumerate(steps):
        where = f"Sweep file {path}: steps[{i}]"
        if not isinstance(step, dict) or "output" not in step or "name" not in step:
            raise InvalidInputError(f"{where} needs at least 'name' and 'output'")
        unknown = set(step) - _STEP_KEYS
        if unknown:
            raise InvalidInputError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_STEP_KEYS)})")
        if step.get("after") is not None and step["after"] not in names:
            raise InvalidInputError(f"{where}: 'after: {step['after']}' names no earlier step (have {sorted(names)})")
        names.add(step["name"])
    unknown = set(spec.get("defaults") or {}) - (_STEP_KEYS - {"name", "output", "after", "grid"})
    if unknown:
        raise InvalidInputError(f"Sweep file {path}: unknown defaults key(s) {sorted(unknown)} "
                                "(known: args, opts, config, dataset_config)")
    unknown = set(spec.get("slurm") or {}) - _SLURM_KEYS
    if unknown:
        raise InvalidInputError(f"Sweep file {path}: unknown slurm key(s) {sorted(unknown)} "
                                f"(known: {sorted(_SLURM_KEYS)})")
    spec["_path"] = path
    return spec


def _axis_points(name: str, values: Any, where: str) -> List[Dict[str, Any]]:
    """An axis' values as variable assignments: a scalar sets ``name``, a mapping sets its keys."""
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise InvalidInputError(f"{where}: axis {name!r} has no values")
    return [dict(v) if isinstance(v, dict) else {name: v} for v in values]


def _product(grid: Mapping[str, Any], where: str) -> List[Dict[str, Any]]:
    axes = [_axis_points(name, values, where) for name, values in (grid or {}).items()]
    points = []
    for combo in itertools.product(*axes):
        point: Dict[str, Any] = {}
        for assignment in combo:
            point.update(assignment)
        points.append(point)
    return points


def _format(template: Any, variables: Mapping[str, Any], where: str) -> str:
    try:
        return string.Formatter().vformat(str(template), (), variables)
    except KeyError as exc:
        raise InvalidInputError(f"{where}: {template!r} uses {{{exc.args[0]}}}, which no axis or var defines "
                                f"(have {sorted(variables)})") from None
    except (ValueError, IndexError) as exc:
        raise InvalidInputError(f"{where}: bad template {template!r}: {exc}") from None


def _matches(point: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    return all(str(point.get(k)) == str(v) for k, v in pattern.items())


def expand(spec: Mapping[str, Any], data: str = "", overrides: Optional[Mapping[str, List[str]]] = None,
           extra_opts: Sequence[str] = ()) -> List[Run]:
    """The sweep's runs, dependencies first; the same output folder twice must mean the same command."""
    path = spec.get("_path", "sweep")
    grid = dict(spec.get("grid") or {})
    for axis, values in (overrides or {}).items():
        grid[axis] = list(values)
    constants = dict(spec.get("vars") or {})
    constants["data"] = data or spec.get("data") or os.environ.get("DATA", "./data")
    points = [p for p in _product(grid, f"{path}: grid")
              if not any(_matches(p, pattern) for pattern in spec.get("exclude") or [])]
    points += [dict(p) for p in spec.get("include") or []]
    defaults = spec.get("defaults") or {}
    runs: "OrderedDict[str, Run]" = OrderedDict()
    for base in points:
        made: Dict[str, Dict[Tuple, Run]] = {}
        for step in spec["steps"]:
            where = f"{path}: step {step['name']!r}"
            own_points = _product(step.get("grid") or {}, where) or [{}]
            made[step["name"]] = {}
            for own in own_points:
                variables = {**constants, **base, **own}
                parent = None
                if step.get("after") is not None:
                    parent = made[step["after"]].get(_own_key(spec, step["after"], variables))
                    if parent is None:
                        raise InvalidInputError(f"{where}: no {step['after']!r} run for {variables}")
                    variables["model_dir"] = parent.output
                run = _make_run(step, defaults, variables, extra_opts, parent, where)
                previous = runs.setdefault(os.path.normpath(run.output), run)
                if previous.argv != run.argv:
                    raise InvalidInputError(f"{where}: two different commands write {run.output}:\n  "
                                            f"{shlex.join(previous.argv)}\n  {shlex.join(run.argv)}")
                made[step["name"]][_own_key(spec, step["name"], variables)] = previous
    return list(runs.values())


def _own_key(spec: Mapping[str, Any], step_name: str, variables: Mapping[str, Any]) -> Tuple[str, ...]:
    """A step's run at one grid point is found by the values of the step's own axes."""
    step = next(s for s in spec["steps"] if s["name"] == step_name)
    names = sorted({k for p in _product(step.get("grid") or {}, step_name) for k in p})
    return tuple(str(variables.get(k)) for k in names)


def _format_items(items: Sequence[Any], variables: Mapping[str, Any], where: str) -> List[str]:
    """Each item formatted; an item that is exactly ``{name}`` of a list variable becomes its elements
    (a method's own flags, e.g. MVLPT's ``--cut-contextlen`` for CoOp and UPT only)."""
    out: List[str] = []
    for item in items:
        name = str(item)[1:-1] if str(item).startswith("{") and str(item).endswith("}") else None
        if name is not None and isinstance(variables.get(name), list):
            out += [_format(element, variables, where) for element in variables[name]]
        else:
            out.append(_format(item, variables, where))
    return out


def _make_run(step: Mapping[str, Any], defaults: Mapping[str, Any], variables: Dict[str, Any],
              extra_opts: Sequence[str], parent: Optional[Run], where: str) -> Run:
    def setting(key: str, fallback: Optional[str]) -> Optional[str]:
        value = step[key] if key in step else defaults.get(key, fallback)
        return None if value is None else _format(value, variables, where)

    output = _format(step["output"], variables, where)
    argv = ["--output-dir", output, "--root", str(variables["data"])]
    if "seed" in variables:
        argv += ["--seed", str(variables["seed"])]
    if "trainer" not in variables:
        raise InvalidInputError(f"{where}: no 'trainer' axis or var")
    argv += ["--trainer", str(variables["trainer"])]
    dataset_config = setting("dataset_config", _DEFAULT_DATASET_CONFIG)
    if dataset_config is not None:
        argv += ["--dataset-config-file", dataset_config]
    config = setting("config", _DEFAULT_CONFIG)
    if config is not None:
        argv += ["--config-file", config]
    for key in ("args", "opts"):
        argv += _format_items(list(defaults.get(key) or []) + list(step.get(key) or []), variables, where)
    argv += list(extra_opts)
    return Run(step["name"], variables, output, argv, after=parent)


# ---------------------------------------------------------------------------------------- executors


def log_tail(run: Run, lines: int = 10) -> str:
    """The last lines of a run's console output (``sweep.log``), for the failure report."""
    path = os.path.join(run.output, RUN_LOG)
    if not os.path.isfile(path):
        return "(no sweep.log)"
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:]).rstrip()


def execute(argv: Sequence[str], output: str, env: Optional[Mapping[str, str]] = None,
            started: Optional[Callable[[subprocess.Popen], None]] = None) -> int:
    """Run one command, appending its console output to ``<output>/sweep.log``; its exit status."""
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, RUN_LOG), "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        try:
            process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env or os.environ))
        except OSError as exc:  # e.g. a --python that does not exist: this run fails, the others go on
            log.write(f"Error: cannot start {argv[0]}: {exc}\n")
            return 127
        if started is not None:
            started(process)
        return process.wait()


class _Scheduler:
    """Dependency bookkeeping shared by the executors: which runs may start, which are skipped."""

    def __init__(self, runs: Sequence[Run], bar: Optional[tqdm]):
        self.runs = list(runs)
        self.bar = bar
        for run in self.runs:
            if run.finished:
                run.status = "finished"

    def todo(self) -> List[Run]:
        return [r for r in self.runs if r.status == "pending"]

    def ready(self, run: Run) -> bool:
        return run.after is None or run.after.status in ("finished", "done")

    def blocked(self, run: Run) -> bool:
        return run.after is not None and run.after.status in ("failed", "skipped")

    def record(self, run: Run, returncode: int) -> None:
        run.returncode = returncode
        run.status = "done" if returncode == 0 else "failed"
        if run.status == "failed" and self.bar is not None:
            self.bar.write(f"FAILED (exit {returncode}): {run.output}")
        self.tick()

    def skip_blocked(self) -> None:
        changed = True
        while changed:
            changed = False
            for run in self.todo():
                if self.blocked(run):
                    run.status, run.note = "skipped", f"{run.after.step} run {run.after.output} {run.after.status}"
                    self.tick()
                    changed = True

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def visible_gpus() -> List[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in (x.strip() for x in visible.split(",")) if g and g != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def run_local(runs: Sequence[Run], python: str, slots: Sequence[Optional[str]], bar: Optional[tqdm] = None,
              processes: int = 1) -> None:
    """A pool of ``len(slots)`` concurrent runs; a slot is GPU ids ("0" or "0,1": the run sees only
    those, one torchrun process each when ``processes`` > 1) or None (the CPU).

    A new run starts as soon as one ends (not in waves); a test run starts once its training is done.
    """
    scheduler = _Scheduler(runs, bar)
    free = list(slots)
    running: Dict[Future, Tuple[Run, Optional[str]]] = {}
    with ThreadPoolExecutor(max_workers=len(free)) as pool:
        while True:
            scheduler.skip_blocked()
            for run in scheduler.todo():
                if not free:
                    break
                if not scheduler.ready(run):
                    continue
                slot = free.pop(0)
                env = dict(os.environ)
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                running[pool.submit(execute, run.command(python, TRAIN_PY, processes), run.output, env)] = (run, slot)
                run.status = "running"
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                run, slot = running.pop(future)
                free.append(slot)
                scheduler.record(run, future.result())


class SweepJob:
    """A submitit job: one run's command; preempted or timed out, it stops the run so that it can resume,
    and asks submitit to requeue it (train.py continues from its folder)."""

    def __init__(self, argv: Sequence[str], output: str):
        self.argv = list(argv)
        self.output = output
        self._process: Optional[subprocess.Popen] = None

    def __getstate__(self) -> Dict[str, Any]:
        return {"argv": self.argv, "output": self.output, "_process": None}

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process

    def __call__(self) -> int:
        return execute(self.argv, self.output, started=self._started)

    def checkpoint(self) -> Any:
        """submitit's hook before a requeue: SIGTERM lets train.py save a resumable checkpoint."""
        import submitit
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
        return submitit.helpers.DelayedSubmission(SweepJob(self.argv, self.output))


def _minutes(value: Any) -> int:
    """SLURM's time formats as minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (seconds round up)."""
    text = str(value).strip()
    try:
        days, dash, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if dash:  # after a day count the clock starts with hours
            parts = parts + [0] * (3 - len(parts))
        elif len(parts) < 3:  # M or M:S
            parts = [0] * (3 - len(parts)) + parts if len(parts) == 2 else [0, parts[0], 0]
        hours, minutes, seconds = parts
        return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    except ValueError:
        raise InvalidInputError(f"SLURM time {value!r}: expected minutes or [D-]HH:MM:SS") from None


def submitit_executor(folder: str, cluster: str, slurm: Mapping[str, Any]):
    """submitit's AutoExecutor with the sweep's SLURM settings (partition, time, GPUs, array limit, ...)."""
    try:
        import submitit
    except ImportError:
        raise MissingInputError("The SLURM executor needs submitit: pip install -e \".[slurm]\"") from None
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "slurm" else cluster)
    params: Dict[str, Any] = {"name": "vlprompt-sweep", "gpus_per_node": int(slurm.get("gpus", 1)),
                              "cpus_per_task": int(slurm.get("cpus", 4)), "tasks_per_node": 1, "nodes": 1}
    if slurm.get("time") is not None:
        params["timeout_min"] = _minutes(slurm["time"])
    elif executor.cluster == "slurm":  # submitit's default would kill every run after 5 minutes
        raise MissingInputError("The SLURM executor needs a time limit per run: --time [D-]HH:MM:SS or 'time' "
                                "under 'slurm:' in the sweep file")
    if slurm.get("mem_gb") is not None:
        params["mem_gb"] = int(slurm["mem_gb"])
    if executor.cluster == "slurm":
        for key in ("partition", "account", "qos", "constraint"):
            if slurm.get(key):
                params[f"slurm_{key}"] = str(slurm[key])
        params["slurm_array_parallelism"] = int(slurm.get("array_parallelism", 16))
        params["slurm_max_num_timeout"] = int(slurm.get("max_requeue", 3))
        if slurm.get("additional"):
            params["slurm_additional_parameters"] = dict(slurm["additional"])
    executor.update_parameters(**params)
    return executor


def run_submitit(runs: Sequence[Run], python: str, executor: Any, bar: Optional[tqdm] = None,
                 processes: int = 1) -> None:
    """Submit the runs as job arrays, one per dependency level (training, then the runs that need it):
    the array's parallelism limit lets SLURM start a run whenever one ends. A job with several GPUs
    runs train.py over ``processes`` of them through torchrun."""
    scheduler = _Scheduler(runs, bar)
    # the job process unpickles SweepJob, so it must find this module where this process found it
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(TRAIN_PY)] + ([saved] if saved else []))
    try:
        while True:
            scheduler.skip_blocked()
            level = [r for r in scheduler.todo() if scheduler.ready(r)]
            if not level:
                break
            with executor.batch():
                jobs = [executor.submit(SweepJob(run.command(python, TRAIN_PY, processes), run.output))
                        for run in level]
            if bar is not None:
                bar.write(f"Submitted {len(jobs)} run(s) as job array {jobs[0].job_id.split('_')[0]}")
            for run, job in zip(level, jobs):
                try:
                    code = job.result()
                except Exception as exc:  # the job died outside train.py (node failure, memory, requeue limit)
                    code = -1
                    lines = str(exc).strip().splitlines()
                    run.note = f"job {job.job_id}: {lines[-1] if lines else type(exc).__name__}"
                scheduler.record(run, code)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


# ------------------------------------------------------------------------------------------ results


def _setting_label(variables: Mapping[str, Any], skip: Iterable[str]) -> str:
    skip = set(skip) | {"data", "model_dir"}
    return " ".join(f"{k}={v}" for k, v in variables.items() if k not in skip)


def results_table(spec: Mapping[str, Any], runs: Sequence[Run], metric: str = "accuracy") -> Tuple[str, str]:
    """(text, CSV): base/new/H per data set and setting when the sweep names its base and new steps,
    else the metric's mean ± std over seeds per step, setting and data set."""
    table = spec.get("table") or {}
    if table.get("base") and table.get("new"):
        return _base2new(runs, table["base"], table["new"])
    groups: "OrderedDict[Tuple[str, str, str], List[Tuple[Any, float]]]" = OrderedDict()
    for run in runs:
        key = (run.step, _setting_label(run.variables, {"seed", "dataset"}), str(run.variables.get("dataset", "")))
        values = groups.setdefault(key, [])
        _, result, _ = parse_run(run.output, table.get("metric", metric), TRAIN_END_SIGNALS + TEST_END_SIGNALS)
        if result is not None and result.value is not None:
            values.append((run.variables.get("seed", ""), result.value))
    rows, csv = [], ["step,setting,dataset,n,mean,std,seeds"]
    for (step, label, dataset), values in groups.items():
        if not values:
            rows.append([step, label, dataset, 0, "-", ""])
            csv.append(f"{step},\"{label}\",{dataset},0,,,")
            continue
        mean, std, _ = summarize([v for _, v in values])
        seeds = " ".join(str(s) for s, _ in values)
        rows.append([step, label, dataset, len(values), f"{mean:.2f} ± {std:.2f}", seeds])
        csv.append(f"{step},\"{label}\",{dataset},{len(values)},{mean:.4f},{std:.4f},{seeds}")
    text = tabulate(rows, headers=["step", "setting", "dataset", "n", f"{metric} mean ± std", "seeds"],
                    disable_numparse=True)
    return text, "\n".join(csv) + "\n"


def _base2new(runs: Sequence[Run], base_step: str, new_step: str) -> Tuple[str, str]:
    """base2new_table's rows and DePT's CSV, per setting, from the sweep's own run folders."""
    settings: "OrderedDict[Setting, SettingRuns]" = OrderedDict()
    for run in runs:
        if run.step != new_step or run.after is None or run.after.step != base_step:
            continue
        v = run.variables
        label = _setting_label(v, {"seed", "dataset", "trainer", "cfg"})
        setting = Setting(str(v.get("trainer", "")), str(v.get("cfg", "")), label)
        setting_runs = settings.setdefault(setting, SettingRuns())
        seeds = setting_runs.accuracies.setdefault(str(v.get("dataset", "")), {})
        seeds[int(v.get("seed", 0))] = (read_accuracy(run.after.output), read_accuracy(run.output))
    texts, csvs = [], []
    for setting, setting_runs in settings.items():
        rows, average, notes = table_rows(setting_runs)
        texts.append("\n".join([format_table(setting, rows, average)] + [f"Note: {n}" for n in notes]))
        if average is not None:
            csvs.append(f"# {setting.trainer} / {setting.cfg} / {setting.shots}\n" +
                        dept_csv(setting_runs, rows, average))
    return "\n\n".join(texts), "".join(csvs)


# ------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="the sweep file (e.g. configs/sweeps/coop_fewshot.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (finished runs as comments)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--jobs", type=int, default=0,
                        help="local: concurrent runs (default: one per visible GPU, or 1 without GPUs)")
    parser.add_argument("--gpus", default="",
                        help="local: GPU ids to use, one run each (e.g. 0,1,3; 'all': every visible GPU; "
                             "'none': the CPU)")
    parser.add_argument("--gpus-per-run", type=int, dest="gpus_per_run",
                        help="GPUs of one run (default 1; the file's 'gpus_per_run'): above 1, each run is one "
                             "torchrun over that many processes (local: the GPUs are split into groups; SLURM: "
                             "GPUs per job)")
    parser.add_argument("--root", default="", help="data root (train.py's --root); default: the file's 'data', "
                                                   "else $DATA, else ./data")
    parser.add_argument("--set", action="append", default=[], metavar="AXIS=V1,V2",
                        help="replace the values of an axis of the top-level grid, or add one "
                             "(e.g. --set dataset=dtd,eurosat --set seed=1)")
    parser.add_argument("--extra-opts", default="", help="KEY VALUE options appended to every command (EXTRA_OPTS)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for train.py")
    parser.add_argument("--csv", default="", help="where to write the results table (default: "
                                                  "output/sweeps/<sweep name>.csv)")
    parser.add_argument("--tail", type=int, default=10, help="log lines shown per failed run")
    slurm = parser.add_argument_group("SLURM (submitit; these override the file's 'slurm' settings)")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", help="per run, minutes or [D-]HH:MM:SS")
    slurm.add_argument("--cpus", type=int)
    slurm.add_argument("--mem-gb", type=int, dest="mem_gb")
    slurm.add_argument("--array-parallelism", type=int, dest="array_parallelism",
                       help="at most this many runs of an array at once (default 16)")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--cluster", default="slurm", choices=("slurm", "local", "debug"),
                       help="submitit's executor: slurm, or its local/debug stand-ins (no cluster needed)")
    slurm.add_argument("--submitit-folder", default="output/sweeps/submitit",
                       help="submitit's job files and logs")
    return parser


def _overrides(items: Sequence[str]) -> Dict[str, List[str]]:
    result: Dict[str, List[str]] = {}
    for item in items:
        axis, sep, values = item.partition("=")
        if not sep or not axis or not values:
            raise InvalidInputError(f"--set {item!r}: expected AXIS=V1,V2,...")
        result[axis.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return result


def _local_slots(args: argparse.Namespace, per_run: int) -> List[Optional[str]]:
    """One entry per concurrent run: its GPU ids ("0" or, with ``per_run`` > 1, "0,1"), or None."""
    if args.gpus == "none":
        gpus: List[str] = []
    elif args.gpus in ("", "all"):
        gpus = visible_gpus()
    else:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if per_run > 1:
        if len(gpus) < per_run:
            raise InvalidInputError(f"--gpus-per-run {per_run} needs at least {per_run} GPUs; "
                                    f"{len(gpus)} are visible/given ({','.join(gpus) or 'none'})")
        groups = [",".join(gpus[i:i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]
        if args.jobs and args.jobs != len(groups):
            print(f"Note: one run per {per_run} GPUs ({len(groups)} at once); --jobs {args.jobs} is ignored")
        return list(groups)
    if gpus:
        if args.jobs and args.jobs != len(gpus):
            print(f"Note: one run per GPU ({len(gpus)}); --jobs {args.jobs} is ignored")
        return list(gpus)
    return [None] * max(1, args.jobs or 1)


def report(runs: Sequence[Run], tail: int) -> str:
    """The summary after a sweep: counts, each failed run with its log tail, and the skipped ones."""
    counts = OrderedDict((s, sum(r.status == s for r in runs)) for s in ("finished", "done", "failed", "skipped"))
    lines = ["Runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
             " (finished: results.json was there already)"]
    for run in runs:
        if run.status == "failed":
            lines.append(f"\nFAILED (exit {run.returncode}{'; ' + run.note if run.note else ''}): {run.output}")
            lines.append("  $ " + shlex.join(run.command("python")))
            lines.extend("  | " + line for line in log_tail(run, tail).splitlines())
    for run in runs:
        if run.status == "skipped":
            lines.append(f"SKIPPED: {run.output} ({run.note})")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep)
    runs = expand(spec, data=args.root, overrides=_overrides(args.set), extra_opts=shlex.split(args.extra_opts))
    if args.dry_run:
        for run in runs:
            prefix = "# finished: " if run.finished else ""
            print(prefix + shlex.join(run.command("python", "train.py")))
        print(f"# {len(runs)} run(s), {sum(r.finished for r in runs)} finished")
        return 0
    todo = sum(not r.finished for r in runs)
    print(f"{len(runs)} run(s) in {args.sweep}: {len(runs) - todo} finished, {todo} to run")
    per_run = args.gpus_per_run if args.gpus_per_run is not None else int(spec.get("gpus_per_run", 1))
    if per_run < 1:
        raise InvalidInputError(f"gpus_per_run must be >= 1, got {per_run}")
    with tqdm(total=todo, unit="run", dynamic_ncols=True) as bar:
        if args.executor == "local":
            run_local(runs, args.python, _local_slots(args, per_run), bar, per_run)
        else:
            slurm = dict(spec.get("slurm") or {})
            for key in ("partition", "time", "cpus", "mem_gb", "array_parallelism", "account", "qos"):
                if getattr(args, key) is not None:
                    slurm[key] = getattr(args, key)
            if args.gpus_per_run is not None or "gpus_per_run" in spec:
                slurm["gpus"] = per_run
            executor = submitit_executor(args.submitit_folder, args.cluster, slurm)
            run_submitit(runs, args.python, executor, bar, int(slurm.get("gpus", 1)))
    print(report(runs, args.tail))
    text, csv = results_table(spec, runs)
    print()
    print(text)
    name = os.path.splitext(os.path.basename(args.sweep))[0]
    csv_path = args.csv or spec.get("csv") or os.path.join("output", "sweeps", f"{name}.csv")
    os.makedirs(os.path.dirname(csv_path) or ".", exist_ok=True)
    atomic_write_text(csv_path, csv)
    print(f"Wrote {csv_path}")
    return 1 if any(r.status in ("failed", "skipped") for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
