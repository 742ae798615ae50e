"""Train or evaluate a prompt-tuning method: CoOp's command line, on vlprompt's engine.

example (flags first, then KEY VALUE config options):
  python train.py --root ~/data --seed 1 --trainer CoOp
      --dataset-config-file configs/datasets/oxford_pets.yaml
      --config-file configs/trainers/CoOp/vit_b16.yaml
      --output-dir output/oxford_pets/CoOp/seed1
      TRAINER.COOP.N_CTX 16 DATASET.NUM_SHOTS 16
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import sys
from typing import List, Optional

import numpy as np
import torch

import datasets
import trainers
from clip.errors import UserInputError
from datasets.build import build_dataset
from datasets.manager import find_unreadable_images, parse_dataset_names
from trainers.engine import distributed
from trainers.engine.config import get_cfg_default, merge_from_file, merge_from_list
from trainers.engine.lock import output_dir_lock
from trainers.engine.logger import report_error, setup_logger
from trainers.engine.registry import TRAINER_REGISTRY, build_trainer, extend_cfg
from trainers.engine.results import write_results
from trainers.engine.trainer import TrainingStopped
from trainers.mvlpt import apply_mvlpt_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to the data sets")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    parser.add_argument("--seed", type=int, default=-1, help="only positive values enable a fixed seed")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to the trainer config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to the data set config file")
    parser.add_argument("--trainer", type=str, default="", help="name of the trainer")
    parser.add_argument("--backbone", type=str, default="",
                        help="MODEL.BACKBONE.NAME: the CLIP model, e.g. ViT-B/16, RN50 (usually set by the config file)")
    parser.add_argument("--head", type=str, default="", help="name of the head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="",
                        help="load the model from this run's folder: for --eval-only, or as the starting point "
                             "of training (MVLPT's source prompt)")
    parser.add_argument("--load-epoch", type=int, help="load the weights of this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--verify-data", action="store_true",
                        help="open every image of the data set's splits once, list the bad files and exit")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of input errors too (also VLPROMPT_DEBUG=1)")
    parser.add_argument("--list-trainers", action="store_true", help="print the registered trainers and exit")
    parser.add_argument("--list-datasets", action="store_true", help="print the registered data sets and exit")
    mvlpt = parser.add_argument_group("MVLPT's arguments")
    mvlpt.add_argument("--dataset", type=str, default="",
                       help="task(s), comma-separated: sets DATASET.NAME and DATASET.DATASET; with --multi-task and "
                            "without --dataset-coop, ELEVATER tasks are sorted by name (MVLPT's multi-task order)")
    mvlpt.add_argument("--shots", type=int, default=None,
                       help="shots per class: DATASET.NUM_SHOTS and DATASET.NUM_SAMPLES_PER_CLASS (0 is ignored)")
    mvlpt.add_argument("--dataset-coop", action="store_true", help="CoOp's data sets (DATASET.COOP)")
    mvlpt.add_argument("--multi-task", action="store_true", help="train on all --dataset tasks (DATASET.MULTITASK)")
    mvlpt.add_argument("--multi-task-label_pertask", action="store_true",
                       help="each sample's loss over its own task's classes (DATASET.MULTITASK_LABEL_PERTASK)")
    mvlpt.add_argument("--multi-task-evalkey", type=str, default="average",
                       help="model selection: 'average' over tasks or one task's name (DATASET.MULTITASK_EVALKEY)")
    mvlpt.add_argument("--cut-contextlen", action="store_true", help="TRAINER.CUT_CONTEXTLEN")
    mvlpt.add_argument("--act-ckpt", type=int, default=1,
                       help="activation checkpointing segments (TRAINER.ACT_CKPT; 1: none)")
    softcpt = parser.add_argument_group("SoftCPT's arguments")
    softcpt.add_argument("--old-data-path", type=str, default="",
                         help="DATALOADER.OLD_DATA_PATH: image path prefix in SoftCPT's few-shot files ...")
    softcpt.add_argument("--new-data-path", type=str, default="",
                         help="DATALOADER.NEW_DATA_PATH: ... replaced by this one")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command line (KEY VALUE pairs)")
    return parser


def reset_cfg(cfg, args) -> None:
    """Apply the named flags the way CoOp does: only when truthy / non-empty."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed:
        cfg.SEED = args.seed
    else:
        print("Note: --seed 0 is ignored as in CoOp (SEED stays -1); pass the option SEED 0 to seed with 0")
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    if args.old_data_path:
        cfg.DATALOADER.OLD_DATA_PATH = args.old_data_path
    if args.new_data_path:
        cfg.DATALOADER.NEW_DATA_PATH = args.new_data_path
    apply_mvlpt_arguments(cfg, args)


def setup_cfg(args):
    """defaults <- trainer keys <- data set YAML <- trainer YAML <- flags <- options."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list(cfg, args.opts or [])
    cfg.freeze()
    return cfg


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def environment_info() -> str:
    import PIL
    import torchvision
    lines = [
        f"Python: {sys.version.split()[0]} ({platform.platform()})",
        f"PyTorch: {torch.__version__}",
        f"torchvision: {torchvision.__version__}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    lines.append(f"Pillow ({PIL.__version__})")
    return "\n".join(lines)


def print_args(args, cfg) -> None:
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(vars(args)):
        if key in ("list_trainers", "list_datasets"):
            continue
        print(f"{key}: {getattr(args, key)}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


#: exit status of a run stopped by an error in its inputs (paths, data, config, checkpoints)
EXIT_INPUT_ERROR = 2


def input_error_message(exc: UserInputError) -> str:
    """The error's own message; raised in a data-loader worker, without the worker's traceback text."""
    message = str(exc)
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except TrainingStopped as exc:
        report_error(str(exc))
        return 128 + exc.signum
    except UserInputError as exc:
        if args.debug or os.environ.get("VLPROMPT_DEBUG") == "1":
            raise
        report_error(f"Error: {input_error_message(exc)}")
        return EXIT_INPUT_ERROR


def run(args) -> int:
    if args.list_trainers or args.list_datasets:
        if args.list_trainers:
            print("Trainers: " + ", ".join(TRAINER_REGISTRY.names()))
            aliases = TRAINER_REGISTRY.aliases()
            if aliases:
                print("Aliases: " + ", ".join(f"{a} -> {t}" for a, t in sorted(aliases.items())))
        if args.list_datasets:
            print("Data sets: " + ", ".join(datasets.DATASET_REGISTRY.names()))
        return 0
    cfg = setup_cfg(args)
    if args.print_config:
        print(cfg)
        return 0
    if args.verify_data:
        return verify_data(cfg)
    if not cfg.TRAINER.NAME:
        print("No trainer given: pass --trainer NAME (see --list-trainers)", file=sys.stderr)
        return 2
    try:
        TRAINER_REGISTRY.resolve(cfg.TRAINER.NAME)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2

    # torchrun: one run over several processes; every rank is seeded alike so their samplers agree.
    distributed.init_from_env(cfg.USE_CUDA)
    try:
        return run_in_process_group(args, cfg)
    finally:
        distributed.close()


def run_in_process_group(args, cfg) -> int:
    """Train and/or test; with several processes rank 0 alone holds the lock and writes the files."""
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    main_process = distributed.is_main()
    with output_dir_lock(cfg.OUTPUT_DIR) if main_process else contextlib.nullcontext():
        distributed.barrier()  # the others start once rank 0 holds the folder
        if main_process:
            setup_logger(cfg.OUTPUT_DIR)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        print("Collecting env info ...")
        print("** System info **")
        print(environment_info())
        print()

        trainer = build_trainer(cfg)
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
        elif not args.no_train:
            if args.model_dir:
                print(f"Initialising the learned weights from {args.model_dir} (a resumed run continues from its own)")
                trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.train()
        results = getattr(trainer, "last_results", None)
        if results is not None and main_process:
            write_results(cfg.OUTPUT_DIR, results, cfg, extra={
                "eval_only": args.eval_only, "model_dir": args.model_dir, "load_epoch": args.load_epoch,
                **trainer.results_report()})
        return 0


def verify_data(cfg) -> int:
    """Open every image of the configured data set(s) once; 0 when all read, else list them."""
    names = parse_dataset_names(cfg.DATASET.NAME)
    problems = find_unreadable_images([build_dataset(cfg, name) for name in names])
    for line in problems:
        print(f"Unreadable image: {line}")
    print(f"{len(problems)} unreadable image(s) in {', '.join(names)}" if problems else
          f"Every image of {', '.join(names)} reads")
    return EXIT_INPUT_ERROR if problems else 0


if __name__ == "__main__":
    sys.exit(main())
