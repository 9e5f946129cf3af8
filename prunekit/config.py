"""The validated run configuration.

Strict on user YAML: an unknown key, a wrong type or an out-of-range value is a :class:`ConfigError`
whose message names the key, the value and the file, on one line (the CLI turns it into exit code 2).
YAML is read with a safe loader that also refuses anchors and aliases (:mod:`prunekit.safe_yaml`):
nothing in a config can run code or expand into a memory bomb. Numbers are finite and bounded, the
seed fits ``0 <= seed < 2**32``, ``name`` is one folder name, and booleans are YAML booleans (the
string ``"yes"`` is an error, not true).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prunekit.errors import UserError, clip, shorten
from prunekit.safe_yaml import AliasError, parse, read_text


class ConfigError(UserError):
    """A user-facing configuration problem; its message is one line naming the problem and the fix."""


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]{0,99}")
BIG = 2**20  # upper bound of batch sizes, sequence lengths and probe counts (a typo, not a setting)


def _is_bool_field(annotation: Any) -> bool:
    return annotation is bool or (
        bool in getattr(annotation, "__args__", ()) and type(None) in annotation.__args__
    )


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf` epochs or a `.nan` lr is an error, not an endless or silent run.
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_bools(cls, v: Any, info: Any) -> Any:
        # pydantic's lax mode reads "yes", "on" and 1 as true: a quoted "yes" must not turn on
        # trust_remote_code. Every bool field of every section takes only a YAML boolean.
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and _is_bool_field(field.annotation) and not isinstance(v, bool):
            if v is None and field.annotation is not bool:
                return v
            raise ValueError("give true or false (a YAML boolean, unquoted)")
        return v


class DataConfig(_Strict):
    """Which dataset, and how to split it (train / validation / test, deterministic from the seed)."""

    name: str = "mnist1d"  # registry name: mnist1d, fashion_mnist, digits, tweet_sentiment, hf, csv, json, imagefolder
    variant: Literal["standard", "large"] = "standard"  # mnist1d: 4000/1000 or 40k/10k
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_train_samples: int | None = Field(None, gt=0)  # subsample train (after splitting) for quick runs
    max_eval_samples: int | None = Field(None, gt=0)
    # generic sources
    path: str | None = None  # hf: dataset id or local script-free folder
    subset: str | None = None  # hf: configuration name
    files: dict[str, str] | None = None  # csv/json/imagefolder: {"train": path, "test": path}
    text_column: str = "text"
    label_column: str = "label"
    # text
    tokenizer: str | None = None  # defaults to the model's path
    max_length: int = Field(64, gt=0, le=BIG)
    batch_size: int = Field(128, gt=0, le=BIG)  # evaluation batch size; fine-tuning has its own


class ModelConfig(_Strict):
    name: str = "cnn1d"  # registry name: mlp, simple_cnn, cnn1d, resnet20, resnet56, resnet20_1d, hf, minilm
    kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. {"width": 32}
    path: str | None = None  # hf: a local folder or hub id
    trust_remote_code: bool = False  # off unless the user turns it on: remote code runs on load
    checkpoint: str | None = None  # start from a prunekit checkpoint folder instead of training


class TrainConfig(_Strict):
    """One training recipe; used for the dense model and for fine-tuning after each prune."""

    epochs: float = Field(1.0, ge=0.0, le=1e6)
    max_steps: int | None = Field(None, gt=0, le=10**9)
    # The GLOBAL batch: with N processes each takes batch_size / N (it must divide), so one config
    # trains alike on 1 and on N processes.
    batch_size: int = Field(64, gt=0, le=BIG)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    grad_accum_steps: int = Field(1, gt=0, le=2**16)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    max_grad_norm: float | None = Field(1.0, gt=0.0)


class LayerRule(_Strict):
    """Per-layer limits by name pattern (an exact name, a dotted suffix or a shell wildcard, as peft's
    ``target_modules``): keep between ``min_keep`` and ``max_keep`` of the matching groups' units."""

    pattern: str = Field(min_length=1)
    min_keep: float = Field(0.0, ge=0.0, le=1.0)
    max_keep: float = Field(1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> LayerRule:
        if self.min_keep > self.max_keep:
            raise ValueError(f"min_keep {self.min_keep} > max_keep {self.max_keep} for '{self.pattern}'")
        return self


class ScheduleConfig(_Strict):
    """How each level is reached: ``one_shot`` (one prune, one fine-tune), ``linear`` (``steps`` equal
    steps) or ``constant_gap`` (steps sized so that the predicted gap stays within ``tolerance``
    (relative) of ``reference``, the dense model's when None; at most ``steps`` steps). The fine-tuning
    budget is shared over the steps. ``force``: go on to the target even where the gap cannot be held.
    ``chain_levels``: each level starts from the previous level's model."""

    name: Literal["one_shot", "linear", "constant_gap"] = "one_shot"
    steps: int = Field(4, gt=0)
    tolerance: float = Field(0.25, gt=0.0)
    reference: float | None = Field(None, gt=0.0)
    force: bool = False
    chain_levels: bool = False


class PruneConfig(_Strict):
    planner: str = "uniform"
    # the planner's own options, checked against its config dataclass before any work (prunekit.planner)
    planner_options: dict[str, Any] = Field(default_factory=dict)
    levels: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.85])  # fraction of params saved
    # latency: the median CPU latency on evaluate's latency batch, met within 5 % (planner/latency.py)
    metric: Literal["params", "macs", "latency"] = "params"
    # unit scores within a layer (l1, l2, taylor, hessian, lamp, random), for planners that take one;
    # None: the planner's default. Given to a planner that ranks by its own scores, it is an error.
    importance: str | None = None
    round_to: int = Field(1, gt=0)
    min_keep_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    layers: list[LayerRule] = Field(default_factory=list)  # per-layer min / max keep by name pattern
    ignore: list[str] = Field(default_factory=list)  # name patterns of layers never pruned
    # mixture-of-experts blocks: also offer whole experts (with their router rows) as prunable units
    experts: bool = False
    importance_batches: int = Field(4, gt=0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @field_validator("levels")
    @classmethod
    def _levels_in_range(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one level, e.g. [0.5, 0.7]")
        for x in v:
            if not 0.0 <= x < 1.0:
                raise ValueError(f"level {x} is outside [0, 1): a level is the fraction of params saved")
        if len({round(x, 4) for x in v}) != len(v):
            raise ValueError("levels repeat: give each fraction once")
        return sorted(v)

    @model_validator(mode="after")
    def _latency_one_shot(self) -> PruneConfig:
        if self.metric == "latency" and self.schedule.name != "one_shot":  # steps are sized in MACs
            raise ValueError("metric latency is planned one shot: set prune.schedule.name to one_shot")
        return self


class EstimateConfig(_Strict):
    # In `prunekit run`: estimate the dense model and each pruned model (before its fine-tuning) and
    # record C_arch, T_opt, d_eff, the predicted gap and the measured train−test gap in the report.
    enabled: bool = False
    probe_samples: int = Field(256, gt=0, le=BIG)  # NTK Gram / spectrum inputs
    # per-group NTK traces: "exact" from the Jacobian the Gram is built from (free), or "hutchinson"
    ntk_traces: Literal["exact", "hutchinson"] = "exact"
    trace_probes: int = Field(
        64, gt=0, le=BIG
    )  # Hutchinson probes for per-group NTK traces (ntk_traces: hutchinson)
    # "gauss_newton": exact Gauss-Newton part from the same Jacobian + Hutchinson on the remainder;
    # "hutchinson" / "hutchpp": Hutchinson / Hutch++ on the whole Hessian
    hessian_method: Literal["gauss_newton", "hutchinson", "hutchpp"] = "gauss_newton"
    # with gauss_newton the probes only see the small remainder H − G: a few, on a subset each, suffice
    hessian_probes: int = Field(8, gt=0, le=BIG)
    hessian_samples_per_probe: int | None = Field(64, gt=0, le=BIG)  # a random subset per probe; None: all
    power_iters: int = Field(
        20, gt=0, le=10**4
    )  # Lanczos iterations (at most) for the top Hessian eigenvalue
    # Jacobian entries (float32) held at once: the Gram's block budget; the whole Jacobian is kept for
    # exact Gauss-Newton products when it fits
    jacobian_elements: int = Field(2**27, gt=0, le=2**40)
    id_samples: int = Field(2000, gt=0, le=2**24)  # points for the intrinsic dimension
    id_representation: str = "inputs"  # "inputs" or a module name whose activations are used
    ridge: float = Field(1e-2, gt=0.0)


class EvaluateConfig(_Strict):
    latency_batch_size: int = Field(1, gt=0, le=BIG)
    latency_repeats: int = Field(30, gt=0, le=10**5)
    latency_warmup: int = Field(5, ge=0, le=10**5)
    latency_threads: int = Field(1, gt=0, le=1024)


class LoRAConfig(_Strict):
    # LoRA adapters for causal-LM recovery (prunekit/train/lora.py), merged into the pruned weights
    r: int = Field(8, gt=0, le=4096)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # 0: every process trains the same adapters
    target_modules: str | list[str] = "all-linear"  # module-name suffixes (q_proj, ...) or all-linear

    @field_validator("target_modules")
    @classmethod
    def _names_or_all(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str) and v != "all-linear":  # peft would read it as a regex over full names
            raise ValueError("give a list of module names (e.g. [q_proj, v_proj]) or all-linear")
        if isinstance(v, list) and not v:
            raise ValueError("empty: give a list of module names (e.g. [q_proj, v_proj]) or all-linear")
        return v


class RecoveryConfig(_Strict):
    # how the causal-LM task recovers each prune with the finetune recipe: the whole model, or LoRA
    method: Literal["full", "lora"] = "full"
    lora: LoRAConfig = Field(default_factory=LoRAConfig)


class RunConfig(_Strict):
    # modules (names or .py paths) imported before the rest is checked, so that the planners, criteria,
    # models and datasets they register can be used below (prunekit.plugins); first, so it runs first
    imports: list[str] = Field(default_factory=list)
    name: str = "run"  # one folder name: the default output folder is runs/<name>
    seed: int = 0
    # torch intra-op threads for the whole run: CPU results depend on it (summation order), so it is
    # fixed here (and part of the fingerprint) rather than taken from the machine.
    threads: int = Field(1, ge=1, le=1024)
    output_dir: str | None = None  # default: runs/<name>
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(
        default_factory=TrainConfig
    )  # the dense model (skipped for pretrained HF bases only if epochs=0)
    finetune: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)  # causal-LM task only

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, v: str) -> str:
        if not SAFE_NAME.fullmatch(v):
            raise ValueError(
                "the name is used as one folder name under runs/: use letters, digits and . _ - + = @ "
                "(not first: . - + = @), at most 100 characters, no '/'; set output_dir for another place"
            )
        return v

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**32:
            raise ValueError("a seed is an integer with 0 <= seed < 2**32")
        return v

    @field_validator("recovery")
    @classmethod
    def _lora_is_for_lms(cls, v: RecoveryConfig, info: Any) -> RecoveryConfig:
        data = info.data.get("data")  # validated first (declared first); absent if it was invalid
        if v.method == "lora" and data is not None and data.name != "lm_text":
            raise ValueError("method lora is for the causal-LM task (data.name lm_text): use method full")
        return v

    @field_validator("imports")
    @classmethod
    def _import_plugins(cls, v: list[str]) -> list[str]:
        from prunekit.plugins import import_plugins

        return import_plugins(v)

    def fingerprint(self) -> str:
        """A hash of everything that changes results (output_dir excluded), for resume checks."""
        d = self.model_dump(mode="json")
        d.pop("output_dir", None)
        if not d["imports"]:  # runs made before the key existed keep their fingerprint
            d.pop("imports")
        if d["recovery"] == RecoveryConfig().model_dump(mode="json"):  # the same for recovery
            d.pop("recovery")
        if not d["prune"]["experts"]:  # and for prune.experts
            d["prune"].pop("experts")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _parse_value(text: str, item: str) -> Any:
    """A command-line override value, read as YAML scalars/lists (safe loader, no aliases)."""
    try:
        return parse(text)
    except AliasError as err:
        raise ConfigError(
            f"override {shorten(item)}: YAML anchors and aliases are not allowed ({err.what}): "
            "write the value out (quote it for a string starting with * or &)"
        ) from None
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (before validation)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {shorten(item)} has no '=': write it as section.key=value (e.g. finetune.epochs=2)"
            )
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {shorten(item)} has an empty key: write it as section.key=value")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {shorten(item)}: '{clip(p, 40)}' is not a section in {source}")
            node = nxt
        node[parts[-1]] = _parse_value(value, item)
    return out


def _format_error(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in e["loc"][:-1])
        cls: type[BaseModel] = RunConfig
        for p in e["loc"][:-1]:
            if isinstance(p, int):  # an item of a list of sections (prune.layers)
                continue
            ann = cls.model_fields[str(p)].annotation
            ann = next(iter(getattr(ann, "__args__", ())), ann)  # list[LayerRule] -> LayerRule
            cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else cls
        allowed = ", ".join(cls.model_fields)
        where = f"section '{section}'" if section else "the top level"
        return f"{source}: unknown key '{key}' in {where}; allowed keys: {allowed}"
    value = e.get("input")
    msg = clip(e["msg"].removeprefix("Value error, "), 300)
    return f"{source}: invalid value {shorten(value)} for '{clip(key, 60)}': {msg}"


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the config must be a YAML mapping of sections, got {type(raw).__name__}"
        )
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, raw, source)) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file, read safely: at most 1 MiB of UTF-8, no anchors or
    aliases, not empty, a mapping at the top. Raises :class:`ConfigError` with a one-line message.
    Every command that reads a user's YAML file reads it through here."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ConfigError(f"config '{p}' is not a file: give a YAML config file (examples live in configs/)")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist: check the path (examples live in configs/)")
    try:
        raw = parse(read_text(p))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except AliasError as err:
        raise ConfigError(
            f"{p}: YAML anchors and aliases are not allowed ({err.what}): write each value out in full"
        ) from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: fix the syntax") from None
    if raw is None:  # an empty file (or only comments) would silently run every default
        raise ConfigError(
            f"{p}: the config is empty: give at least a name and a data / model section "
            "(start from configs/quickstart.yaml)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the config must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config. Raises :class:`ConfigError` with a one-line message."""
    raw = apply_overrides(read_config_file(path), overrides or [], str(path))
    return config_from_dict(raw, str(path))
