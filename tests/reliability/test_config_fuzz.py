"""Random config values and random YAML bytes: a valid config or one ConfigError line, nothing else.

``hypothesis`` draws values of every JSON/YAML kind (huge ints, inf/nan, long strings, nested lists)
for every key of every section, plus unknown keys; whatever validates must satisfy the invariants the
pipeline relies on (finite numbers, seed range, a name that is one folder name, a fingerprint).
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from prunekit.config import ConfigError, RunConfig, config_from_dict, load_config

SECTIONS = {
    name: field.annotation
    for name, field in RunConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
KEYS = [(None, k) for k in RunConfig.model_fields if k not in SECTIONS] + [
    (s, k) for s, cls in SECTIONS.items() for k in cls.model_fields
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=string.printable, min_size=200, max_size=3000),
    st.sampled_from(["yes", "no", "on", "1", "true", ".inf", "../x", "/abs", "a" * 300, "", " "]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
entries = st.lists(
    st.tuples(st.sampled_from(KEYS + [(None, "bogus"), ("train", "bogus")]), values), max_size=4
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_valid(cfg: RunConfig) -> None:
    assert 0 <= cfg.seed < 2**32
    assert cfg.name and "/" not in cfg.name and cfg.name not in (".", "..")
    for recipe in (cfg.train, cfg.finetune):
        assert math.isfinite(recipe.epochs) and math.isfinite(recipe.lr)
        assert 0 < recipe.batch_size <= 2**20
    assert isinstance(cfg.model.trust_remote_code, bool) and isinstance(cfg.estimate.enabled, bool)
    assert len(cfg.fingerprint()) == 16


@FUZZ
@given(entries)
def test_fuzzed_values_validate_or_fail_in_one_line(items) -> None:
    raw: dict = {}
    for (section, key), value in items:
        (raw.setdefault(section, {}) if section else raw)[key] = value
    try:
        cfg = config_from_dict(raw, "fuzz.yaml")
    except ConfigError as err:
        message = str(err)
        assert message.startswith("fuzz.yaml") and "\n" not in message and len(message) < 600, message
        return
    _check_valid(cfg)


@FUZZ
@given(st.binary(max_size=400) | st.text(alphabet=string.printable + "&*!|>{}[]:-#\u00e9", max_size=400))
def test_fuzzed_files_load_or_fail_in_one_line(tmp_path_factory: pytest.TempPathFactory, content) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz", numbered=True)) / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert "\n" not in str(err) and len(str(err)) < 600, str(err)
        return
    _check_valid(cfg)
