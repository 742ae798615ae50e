"""vlprompt: prompt-tuning methods for CLIP in one codebase (CoOp/Dassl style).

Only the package ``vlprompt`` goes on the path of an environment: the project's own top-level
``clip``, ``datasets`` and ``trainers`` would shadow OpenAI's ``clip`` and Hugging Face's
``datasets`` in every program. A regular install ships them (and ``train.py``,
``parse_test_res.py``) inside as ``vlprompt/_src/``; an editable install maps ``vlprompt`` to the
checkout's folder, whose parent holds them. The console commands put that folder on their own
process's path (``vlprompt/__init__.py``).
"""
from setuptools import find_packages, setup

SHIPPED = "vlprompt._src"
CODE = find_packages(include=["clip", "clip.*", "datasets", "datasets.*", "trainers", "trainers.*"])

setup(
    name="vlprompt",
    version="0.1.0",
    description="CoOp, CoCoOp, KgCoOp, MaPLe, VPT, UPT, MVLPT, SoftCPT, DePT and Adapt on one CLIP and one engine",
    packages=["vlprompt"] + [f"{SHIPPED}.{name}" for name in CODE],
    package_dir={SHIPPED: ".", **{f"{SHIPPED}.{name}": name.replace(".", "/") for name in CODE}},
    py_modules=[f"{SHIPPED}.train", f"{SHIPPED}.parse_test_res"],
    package_data={f"{SHIPPED}.clip": ["bpe_simple_vocab_16e6.txt.gz"],
                  f"{SHIPPED}.datasets.elevater": ["classes.json"]},
    entry_points={"console_scripts": ["vlprompt-train = vlprompt.cli:train", "vlprompt-sweep = vlprompt.cli:sweep",
                                      "vlprompt-parse = vlprompt.cli:parse"]},
    python_requires=">=3.9",
    install_requires=["torch", "torchvision", "yacs", "ftfy", "regex", "tqdm", "tabulate", "pyyaml"],
    extras_require={"dev": ["pytest", "submitit"], "analysis": ["matplotlib"], "slurm": ["submitit"]},
)
