"""Tiny models, inputs and a CPU DDP launch for tests and examples (no downloads)."""

from .launch import cpu_ddp_launch
from .models import (
    example_inputs_for,
    tiny_bert,
    tiny_distilbert,
    tiny_grouped_conv,
    tiny_llama_gqa,
    tiny_mlp,
    tiny_mobile,
    tiny_resnet,
    tiny_vit,
)

__all__ = [
    "cpu_ddp_launch",
    "example_inputs_for",
    "tiny_bert",
    "tiny_distilbert",
    "tiny_grouped_conv",
    "tiny_llama_gqa",
    "tiny_mlp",
    "tiny_mobile",
    "tiny_resnet",
    "tiny_vit",
]
