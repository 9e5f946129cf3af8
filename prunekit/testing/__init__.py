"""Tiny models and inputs for tests and examples (no downloads)."""

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
