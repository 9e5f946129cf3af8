"""Shared test settings: offline HF hub, quiet tokenizers, one torch thread (2-core CI, many workers).

Data that pip cannot install (the Debian Fashion-MNIST package) is optional on a developer's machine
(the tests that need it skip, naming the package) and required under CI (``CI=true``, set by
``.ci/run``, which installs it): there a missing package fails the tests instead of hiding them.
"""

import os
from pathlib import Path

# Set before transformers / datasets / tokenizers are imported anywhere in the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FASHION_MNIST_FIX = "apt-get install dataset-fashion-mnist"


def under_ci() -> bool:
    """True on CI (``CI=true``, as GitHub Actions, GitLab and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _fashion_mnist_missing() -> Path | None:
    from prunekit.data.builtin import FASHION_DIR, FASHION_FILES

    folder = Path(os.environ.get("PRUNEKIT_FASHION_MNIST_DIR", FASHION_DIR))
    return next((folder / f for f in FASHION_FILES.values() if not (folder / f).is_file()), None)


@pytest.fixture
def fashion_mnist_files() -> None:
    """Skip (locally) or fail (under CI) when the Debian Fashion-MNIST files are not installed."""
    missing = _fashion_mnist_missing()
    if missing is None:
        return
    reason = f"Fashion-MNIST not installed ({missing} is missing): run `{FASHION_MNIST_FIX}`"
    if under_ci():
        pytest.fail(f"{reason}; CI requires it (.ci/run installs it)", pytrace=False)
    pytest.skip(reason)
