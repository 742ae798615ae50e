"""OpenAI CLIP for prompt tuning: one model with prompt hooks, OpenAI-compatible loading.

``clip/`` depends only on torch, torchvision, PIL, tqdm and the tokenizer's
text libraries, never on the rest of the project.
"""
from .loading import available_models, load
from .model import CLIP, build_model
from .tiny import tiny_models
from .tokenizer import tokenize

__all__ = ["CLIP", "available_models", "build_model", "load", "tiny_models", "tokenize"]
