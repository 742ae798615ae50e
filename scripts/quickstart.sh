#!/bin/bash
# The offline main job: CoOp (class-specific context, 16 shots, 3 seeds) and zero-shot CLIP on the
# Synthetic data set with the tiny random CLIP, then the results table. No download needed:
# the data set writes itself under $DATA and the tiny CLIP under the CLIP cache on first use.
set -e
cd "$(dirname "$0")/.."
source scripts/common.sh
export DATA PYTHON

SEEDS="${SEEDS}" bash scripts/coop/main.sh synthetic tiny_vit_b16_ep10 end 16 16 True
bash scripts/coop/zeroshot.sh synthetic tiny_vit_b16_ep10
"$PYTHON" -m trainers.analysis.compare \
    "CoOp (16 shots)=output/synthetic/CoOp/tiny_vit_b16_ep10_16shots/nctx16_cscTrue_ctpend" \
    "Zero-shot CLIP=output/ZeroshotCLIP/tiny_vit_b16_ep10/synthetic"
