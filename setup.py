"""vlprompt: prompt-tuning methods for CLIP in one codebase (CoOp/Dassl style)."""
from setuptools import find_packages, setup

setup(
    name="vlprompt",
    version="0.1.0",
    description="CoOp, CoCoOp, KgCoOp, MaPLe, VPT, UPT, MVLPT, SoftCPT, DePT and Adapt on one CLIP and one engine",
    packages=find_packages(include=["clip", "clip.*", "datasets", "datasets.*", "trainers", "trainers.*"]),
    py_modules=["train", "parse_test_res"],
    package_data={"clip": ["bpe_simple_vocab_16e6.txt.gz"], "datasets.elevater": ["classes.json"]},
    python_requires=">=3.9",
    install_requires=["torch", "torchvision", "yacs", "ftfy", "regex", "tqdm", "tabulate"],
    extras_require={"dev": ["pytest"], "analysis": ["matplotlib"]},
)
