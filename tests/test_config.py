"""Config validation: every mistake is one line naming the key, the value and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.config import ConfigError, RunConfig, apply_overrides, load_config

# Run configs; configs/validity_*.yaml are study configs (a run config plus `validate:`) and
# configs/tiny_llama*.yaml are read by experiments/train_tiny_llama.py: each is checked by its reader.
CONFIGS = sorted(
    p
    for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")
    if not p.name.startswith(("validity_", "tiny_llama"))
)
STUDY_CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("validity_*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem or cfg.name


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: p.name)
def test_shipped_study_configs_validate(path: Path) -> None:
    from prunekit.studies.config import load_study_config

    cfg, _ = load_study_config(path)
    assert cfg.name


def test_unknown_key_names_key_section_and_file(tmp_path: Path) -> None:
    p = write(tmp_path, "finetune:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"c\.yaml: unknown key 'finetune\.epoch' in section 'finetune'; allowed keys: .*epochs",
    ):
        load_config(p)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'pruning' in the top level"):
        load_config(write(tmp_path, "pruning: {}\n"))


def test_wrong_type_names_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid value 'many' for 'finetune\.epochs'"):
        load_config(write(tmp_path, "finetune: {epochs: many}\n"))


@pytest.mark.parametrize("level", [1.0, -0.1, 1.5])
def test_level_outside_unit_interval(tmp_path: Path, level: float) -> None:
    with pytest.raises(ConfigError, match=r"prune\.levels.*outside \[0, 1\)"):
        load_config(write(tmp_path, f"prune: {{levels: [0.5, {level}]}}\n"))


def test_fraction_outside_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.validation_fraction"):
        load_config(write(tmp_path, "data: {validation_fraction: 1.0}\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+: fix the syntax"):
        load_config(write(tmp_path, "a: 1\nb: [\n"))


def test_yaml_cannot_run_code(tmp_path: Path) -> None:
    p = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_dotted_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, "finetune: {epochs: 1}\n")
    cfg = load_config(p, ["finetune.epochs=2.5", "prune.levels=[0.3, 0.6]", "model.kwargs.width=8", "seed=7"])
    assert cfg.finetune.epochs == 2.5
    assert cfg.prune.levels == [0.3, 0.6]
    assert cfg.model.kwargs == {"width": 8}
    assert cfg.seed == 7


def test_override_typo_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'finetune.epoch'"):
        load_config(write(tmp_path, "{}\n"), ["finetune.epoch=2"])
    with pytest.raises(ConfigError, match="has no '='"):
        apply_overrides({}, ["finetune.epochs"], "x")


def test_fingerprint_ignores_output_dir_but_not_seed() -> None:
    a = RunConfig(output_dir="x")
    assert a.fingerprint() == RunConfig(output_dir="y").fingerprint()
    assert a.fingerprint() != RunConfig(seed=1).fingerprint()


def test_repeated_levels_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="levels repeat"):
        load_config(write(tmp_path, "prune: {levels: [0.5, 0.7, 0.5]}\n"))


def test_level_names() -> None:
    from prunekit.pipeline import level_name

    assert [level_name(x) for x in (0.5, 0.7, 0.85, 0.995, 0.0)] == [
        "level-50",
        "level-70",
        "level-85",
        "level-99.5",
        "level-0",
    ]
