"""The validity study's configuration: a run config plus a top-level ``validate:`` section.

Any ``prunekit run`` config works; ``validate:`` (optional, defaults below) says which budgets, how many
candidates, which fine-tuning seeds. The ``finetune`` section is the one fixed recipe every candidate
gets; the ``estimate`` section fixes the estimator settings before any result is seen.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunekit.config import ConfigError, RunConfig, apply_overrides, config_from_dict, read_config_file

MIN_CANDIDATES = 8  # fewer candidates per budget give τ too coarse to mean anything (28 pairs at 8)


class ValidateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budgets: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.85])  # fractions of params saved
    candidates: int = Field(32, gt=0)  # per budget
    seeds: list[int] = Field(default_factory=lambda: [0, 1])  # fine-tuning seeds (>= 2: noise ceiling)
    proxy_samples: int = Field(128, gt=1)  # class-balanced training inputs for the zero-cost proxies
    min_keep_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    planners: list[str] | None = None  # planners whose own plans are candidates; None: every registered one
    bootstrap: int = Field(2000, gt=0)
    permutations: int = Field(2000, gt=0)
    output_dir: str | None = None  # default: runs/validate-<name>


def check_study(cfg: RunConfig, v: ValidateConfig) -> None:
    """Bad input that makes the study meaningless, as one line, before any work."""
    if v.candidates < MIN_CANDIDATES:
        raise ConfigError(
            f"validate.candidates={v.candidates} is too few for a meaningful Kendall tau: use at least "
            f"{MIN_CANDIDATES} (30 or more for the published protocol)"
        )
    if len(set(v.seeds)) < 2:
        raise ConfigError(
            f"validate.seeds={v.seeds} needs at least two different seeds: the noise ceiling is the tau "
            "between two seeds' rankings"
        )
    if not v.budgets or any(not 0.0 < b < 1.0 for b in v.budgets) or len(set(v.budgets)) != len(v.budgets):
        raise ConfigError(
            f"validate.budgets={v.budgets} must be distinct fractions of params saved in (0, 1)"
        )
    if v.planners is not None:
        from prunekit.planner import known_planners

        unknown = sorted(set(v.planners) - set(known_planners()))
        if unknown:
            raise ConfigError(
                f"validate.planners: unknown {unknown}; known planners: {', '.join(known_planners())}"
            )
    files = cfg.data.files or {}
    if files.get("validation") is not None and files.get("validation") == files.get("test"):
        raise ConfigError(
            f"data.files uses '{files['test']}' as both the validation and the test split: the study never "
            "chooses anything on the test split; give a separate validation file or drop it"
        )


def load_study_config(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[RunConfig, ValidateConfig]:
    """Read a YAML file: everything but ``validate`` is a run config; ``validate`` is the study's."""
    p = Path(path)
    raw = read_config_file(p)  # the one safe reader: size cap, UTF-8, no YAML aliases, not empty
    raw = apply_overrides(raw, overrides or [], str(p))
    section = raw.pop("validate", None) or {}
    cfg = config_from_dict(raw, str(p))
    try:
        v = ValidateConfig.model_validate(section)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"])
        allowed = ", ".join(ValidateConfig.model_fields)
        if e["type"] == "extra_forbidden":
            raise ConfigError(f"{p}: unknown key 'validate.{key}'; allowed keys: {allowed}") from None
        raise ConfigError(f"{p}: invalid value {e.get('input')!r} for 'validate.{key}': {e['msg']}") from None
    check_study(cfg, v)
    return cfg, v
