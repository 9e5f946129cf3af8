"""Shared test settings: offline HF hub, quiet tokenizers, one torch thread (2-core CI, many workers)."""

import os

# Set before transformers / datasets / tokenizers are imported anywhere in the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
