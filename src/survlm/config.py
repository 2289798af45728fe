"""The typed params of every stage: one frozen dataclass per params.yaml section, with its defaults stated here once.

params.yaml states every value as well, since DVC tracks params there; tests/test_config.py checks that these
defaults equal params.yaml's values. A section given in part takes the rest from these defaults; an unknown key is
an error that names its section and key. Engine blocks are `BackendSettings` (their keys not given come from
params.yaml's engine block), which modeling.backends serves with.

A preset (params/*.yaml) states only what it changes; `python -m survlm.config apply PRESET [section.key=value ...]`
writes params.yaml as these defaults, then the preset's keys, then the overrides, every key checked.

Pure Python: no torch, no model code; every stage imports this module, so it imports nothing heavy.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

PARAMS_FILE = "params.yaml"
QUANTIZATIONS = ("auto", "nf4", "none")          # engine.quantization: the base the adapters were trained on
NF4_SERVING = ("dequantized", "bitsandbytes")


class ConfigError(ValueError):
    """A params section that does not fit its config: one line, `params.yaml: section.key: problem`."""


@dataclass
class BackendSettings:
    """Engine options (the `engine` block of each generating stage); unknown keys are rejected by `from_params`.
    Used by modeling.backends, which serves with them."""
    max_model_len: int = 4096
    dtype: str = "auto"                       # auto: bfloat16 on CUDA, float32 on CPU (bf16 answers wrongly there)
    batch_size: int = 8                       # hf: prompts per generate call; openai: concurrent requests
    gpu_memory_utilization: float = 0.4
    # vllm: the KV cache's size. Unset, vLLM sizes it from gpu_memory_utilization by measuring the GPU's free
    # memory while it profiles; another process allocating meanwhile (training beside a server) shrinks the
    # measure, even below zero. Stated, the cache has this size and other processes do not change it.
    kv_cache_gib: float | None = None
    enforce_eager: bool = True                # CPU start 31 s instead of ~100 s; on GPU set false for CUDA graphs
    tensor_parallel_size: int = 1
    quantization: str = "auto"                # the base the adapters were trained on: nf4 | none | auto (their run records)
    nf4_serving: str = "dequantized"          # vllm, NF4 base: dequantized (exact NF4 weights, bf16 kernels) | bitsandbytes
    max_lora_rank: int | None = None          # default: the largest adapter's r
    max_loras: int | None = None              # adapters in one batch; default: all of this engine's (at least 2)
    max_num_batched_tokens: int | None = None  # vllm: tokens a step; default vLLM's (a server's: half the offline one's)
    seed: int = 0
    openai_base_url: str = "http://localhost:8000/v1"
    openai_model: str | None = None           # served base model name; adapters use their --lora-modules names
                                              # (default: the base dir, or with openai_load_adapters the server's)
    openai_constraint: str = "json_schema"    # or vllm_grammar: our compact grammar itself (vLLM servers only)
    openai_retries: int = 4
    openai_timeout_s: float = 600.0
    openai_logprobs: bool = True              # ask for token log-probabilities (field confidence); off for servers without
    openai_load_adapters: bool = False        # load the adapters into the server (`survlm serve`), checking its base
    extra: dict = field(default_factory=dict)  # passed to vllm.LLM as is

    @classmethod
    def from_params(cls, params: dict | None) -> "BackendSettings":
        params = dict(params or {})
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown engine setting(s): {', '.join(sorted(unknown))}")
        if params.get("quantization") is None:
            params.pop("quantization", None)
        settings = cls(**params)
        if settings.quantization not in QUANTIZATIONS:
            raise ValueError(f"engine quantization must be one of {', '.join(QUANTIZATIONS)}: the base the adapters "
                             f"were trained on (got {settings.quantization!r})")
        if settings.kv_cache_gib is not None and not settings.kv_cache_gib > 0:
            raise ValueError(f"engine kv_cache_gib must be a positive size in GiB, or null (got {settings.kv_cache_gib!r})")
        if settings.nf4_serving not in NF4_SERVING:
            raise ValueError(f"engine nf4_serving must be one of {', '.join(NF4_SERVING)} (got {settings.nf4_serving!r})")
        return settings

    def base_quantization(self, adapters: dict[str, str]) -> str:
        """The quantization of the base the adapters were trained on. `auto` reads their run records
        (artifacts.read_adapter_run), which must agree; with no adapter (zero-shot alone) it is the
        full-precision base. An adapter without a record is an ArtifactError: state the quantization instead."""
        if self.quantization != "auto":
            return self.quantization
        from .artifacts import ArtifactError, read_adapter_run

        found = {name: read_adapter_run(path)["quantization"] for name, path in adapters.items()}
        if len(set(found.values())) > 1:
            raise ArtifactError("adapters trained on different bases cannot share an engine: "
                                + ", ".join(f"{n}: {q}" for n, q in sorted(found.items())))
        return next(iter(found.values()), "none")


# params.yaml's engine block (the `&engine` anchor). The keys it does not state keep BackendSettings' defaults.
ENGINE_DEFAULTS = {"max_model_len": 4096, "gpu_memory_utilization": 0.4, "enforce_eager": True,
                   "tensor_parallel_size": 1, "batch_size": 40, "quantization": "auto", "nf4_serving": "dequantized",
                   "max_loras": None, "max_num_batched_tokens": None, "kv_cache_gib": None}


def _engine() -> BackendSettings:
    return BackendSettings.from_params(ENGINE_DEFAULTS)


@dataclass(frozen=True)
class ModelParams:
    base: str = "bundled:smollm2-135m-instruct"
    allow_download: bool = False


@dataclass(frozen=True)
class PrepareParams:
    source: str = "support2"
    path: str | None = None
    unlocated: str = "value_only"
    schema: str = "bundled:support2-v1"
    seed: int = 42
    note_tokens: int = 768
    prompt: str = "brief"
    styles: tuple[str, ...] = ("flowsheet", "discharge", "signout", "progress", "nursing")
    heldout_styles: tuple[str, ...] = ("nursing",)
    split: dict = field(default_factory=lambda: {"train": 0.6, "val": 0.1, "pairs": 0.1, "test": 0.2})
    alt_unit_rate: float = 0.3
    derived_rate: float = 0.3
    max_patients: int | None = None
    renderings_per_patient: int = 1
    workers: int = 2


@dataclass(frozen=True)
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainerParams:
    """Knobs that sft and dpo share; each under its TRL name, so modeling.training passes them on as they are."""
    learning_rate: float = 1.0e-3
    num_train_epochs: float = 1
    max_steps: int | None = None
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 2
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    max_length: int = 2048
    save_steps: int | None = 8
    eval_steps: int | None = 8
    gradient_checkpointing: bool = False
    activation_offloading: bool = False
    attn_implementation: str = "sdpa"
    optim: str = "auto"


@dataclass(frozen=True)
class SFTParams(TrainerParams):
    quantization: str = "auto"
    weight_decay: float = 0.0
    max_train_notes: int | None = 16
    eval_notes: int | None = 4
    use_liger_kernel: bool = True
    value_weight: float = 1.0
    lora: LoraParams = field(default_factory=LoraParams)


@dataclass(frozen=True)
class ScoringParams:
    """Greedy extraction of validation notes (select_ckpt, dpo.report): backend, decoding limits, engine."""
    backend: str = "auto"
    max_new_tokens: int = 640
    constrained: bool = True
    engine: BackendSettings = field(default_factory=_engine)

    def decoding_args(self) -> dict:
        """The modeling.backends.Decoding keys these params set (a stage without `seed` keeps Decoding's)."""
        args = {"max_new_tokens": self.max_new_tokens, "constrained": self.constrained}
        if hasattr(self, "seed"):
            args["seed"] = self.seed
        return args


@dataclass(frozen=True)
class SelectCkptParams(ScoringParams):
    val_notes: int | None = 3
    include_zero_shot: bool = False
    seed: int = 0


@dataclass(frozen=True)
class SyntheticRates:
    """Chance per note of one synthetic trap of each kind (pairs.build_pairs)."""
    last_value: float = 1.0
    first_value: float = 0.5
    fabricated: float = 1.0
    unit_wrong: float = 0.5


@dataclass(frozen=True)
class MakePairsParams(ScoringParams):
    notes: int | None = 2
    samples: int = 2
    temperature: float = 1.0
    top_p: float = 0.95
    max_model_rejections: int = 3
    single_field: bool = True
    max_type_ratio: float | None = 2.0
    max_direction_ratio: float | None = 1.0
    synthetic: SyntheticRates = field(default_factory=SyntheticRates)
    eval_fraction: float = 0.25
    seed: int = 0


def value_weight_problem(weight: float) -> str | None:
    """Why a loss weight of the answers' value tokens (sft.value_weight, dpo.value_weight) is no weight, or None."""
    if not 0 < weight < float("inf"):
        return f"must be a number above 0 (1: every answer token alike), got {weight}"
    return None


@dataclass(frozen=True)
class DPOParams(TrainerParams):
    beta: float = 0.1
    loss_type: str | tuple[str, ...] = ("sigmoid", "sft")
    loss_weights: tuple[float, ...] | None = (1.0, 1.0)
    learning_rate: float = 5.0e-5
    max_pairs: int | None = 4
    save_steps: int | None = 4
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    max_prompt_length: int = 1536
    eval_steps: int | None = None
    precompute_ref_log_probs: bool = False
    completion: Literal["answer", "field"] = "answer"
    value_weight: float = 1.0
    val_notes: int | None = 2
    report: ScoringParams = field(default_factory=ScoringParams)

    def value_weight_problem(self) -> str | None:
        """Why `value_weight` cannot apply as given (it weighs the `sft` term's tokens in whole answers), or None."""
        w = self.value_weight
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if (problem := value_weight_problem(w)) is not None:
            return problem
        if w != 1.0 and "sft" not in types:
            return f"weighs the sft term's tokens, but loss_type {types} has no sft term"
        if w != 1.0 and self.completion != "answer":
            return "weighs whole answers' value tokens: it needs completion: answer"
        return None


@dataclass(frozen=True)
class DecodingComparison:
    val_notes: int | None = 0
    strategies: tuple[str, ...] = ("greedy", "sample", "beam")
    temperature: float = 0.7
    top_p: float = 0.95
    beam_width: int = 4
    vote_samples: int = 5              # vote: self-consistency, the per-field majority of this many samples


@dataclass(frozen=True)
class Abstention:
    enabled: bool = True               # calibrate field confidence on the greedy comparison; score dpo_abstain


@dataclass(frozen=True)
class InferParams(ScoringParams):
    baselines: tuple[str, ...] = ("sft", "zero_shot")
    test_notes: int | None = 3
    heldout_notes: int | None = 2
    chunk_overlap: int = 128
    seed: int = 0
    decoding_comparison: DecodingComparison = field(default_factory=DecodingComparison)
    abstention: Abstention = field(default_factory=Abstention)


@dataclass(frozen=True)
class SurvivalParams:
    cox_penalizer: float = 0.01
    rsf_trees: int = 100
    rsf_min_leaf: int = 15
    n_jobs: int = 2
    seed: int = 0
    refit_min_notes: int = 40


@dataclass(frozen=True)
class BootstrapParams:
    resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class EvaluateParams:
    survival: SurvivalParams = field(default_factory=SurvivalParams)
    bootstrap: BootstrapParams = field(default_factory=BootstrapParams)


SECTIONS: dict[str, type] = {"model": ModelParams, "prepare": PrepareParams, "sft": SFTParams,
                             "select_ckpt": SelectCkptParams, "make_pairs": MakePairsParams, "dpo": DPOParams,
                             "infer": InferParams, "evaluate": EvaluateParams}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as the annotation `hint` says: numbers from YAML strings (`5e-3`), lists as tuples, nested blocks
    parsed; anything else as given."""
    if hint is BackendSettings:
        value = {} if value is None else value     # an empty block: params.yaml's engine settings
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of engine settings, got {value!r}")
        try:
            return BackendSettings.from_params({**ENGINE_DEFAULTS, **value})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if dataclasses.is_dataclass(hint):
        return _parse(hint, value, where)          # None (an empty block): the block's defaults
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r}")
        return value
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    options = [o for o in options if o is not type(None)]
    if isinstance(value, list) and any(typing.get_origin(o) is tuple for o in options):
        return tuple(value)
    for kind in (bool, int, float):
        if kind in options and not isinstance(value, (list, dict)):
            if kind is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: expected true or false, got {value!r}")
                return value
            try:
                number = kind(value)
                if kind is int and float(value) != number:   # 2.5 is no integer, and is not cut to 2
                    raise ValueError
                return number
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, "
                                  f"got {value!r}") from None
    return value


def _parse(cls: type, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
    return cls(**{name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()})


def parse_section(section: str, data: dict | None, source: str = PARAMS_FILE):
    """The config of one params.yaml section; a ConfigError names the file, section and key that do not fit."""
    if section not in SECTIONS:
        raise ConfigError(f"{source}: {section}: no such params section (known: {', '.join(SECTIONS)})")
    return _parse(SECTIONS[section], data, f"{source}: {section}")


def load_config(section: str, path: str | Path = PARAMS_FILE):
    """The typed params of one stage, read from params.yaml (DVC runs stages in the project root)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    return parse_section(section, params.get(section), str(path))


def to_dict(config) -> dict:
    """A config as plain YAML/JSON data (tuples as lists), in params.yaml's shape."""
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# ---------------------------------------------------------------- presets


def defaults_document() -> dict:
    """params.yaml's content as these defaults give it: every section and key, engine blocks as params.yaml's."""
    def block(cls) -> dict:
        hints = typing.get_type_hints(cls)
        out = {}
        for f in fields(cls):
            if hints[f.name] is BackendSettings:
                out[f.name] = dict(ENGINE_DEFAULTS)
            elif dataclasses.is_dataclass(hints[f.name]):
                out[f.name] = block(hints[f.name])
            else:
                out[f.name] = to_dict(cls())[f.name]
        return out

    return {section: block(cls) for section, cls in SECTIONS.items()}


def _merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it: mappings key by key, any other value replaced whole."""
    out = dict(base)
    for key, value in changes.items():
        if value is None and isinstance(out.get(key), dict):
            continue                                   # an empty block (`evaluate:` alone) changes nothing
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _check(params: dict, source: str) -> None:
    for section, data in params.items():
        parse_section(section, data, source)


def _override(params: dict, item: str) -> dict:
    """`section.key=value` (the value read as YAML) laid over params; checked like a params.yaml key."""
    key, sep, text = item.partition("=")
    path = key.split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"override {item!r}: expected section.key=value")
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not YAML ({str(exc).splitlines()[0]})") from None
    for part in reversed(path[1:]):
        value = {part: value}
    if path[0] not in params:
        raise ConfigError(f"override {item!r}: {path[0]}: no such params section (known: {', '.join(SECTIONS)})")
    node = params
    for depth in range(1, len(path)):
        node = node.get(path[depth - 1]) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(path[:depth])} is not a block of keys")
    out = _merged(params, {path[0]: value})
    parse_section(path[0], out[path[0]], f"override {item!r}")
    return out


def resolve_params(preset: str | Path | None, overrides: list[str] = ()) -> dict:
    """The whole params.yaml document: the defaults, then the preset's keys, then each `section.key=value`.
    A key that fits no config (in the preset or an override) is a ConfigError naming where it came from."""
    import yaml

    params = defaults_document()
    if preset is not None:
        try:
            with open(preset, encoding="utf-8") as fh:
                stated = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"{preset}: cannot read the preset ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{preset}: not YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(stated, dict):
            raise ConfigError(f"{preset}: expected a mapping of params sections")
        _check(stated, str(preset))
        params = _merged(params, stated)
    for item in overrides:
        params = _override(params, item)
    return params


def write_params(params: dict, path: str | Path, header: str) -> None:
    """params.yaml, whole or not at all; YAML aliases written out (each engine block in full)."""
    import yaml

    class Plain(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.dump(params, Dumper=Plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
    from .artifacts import write_text

    write_text(path, text)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m survlm.config", description="Write params.yaml from a preset.")
    sub = ap.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="params.yaml = the defaults + PRESET's keys + the overrides")
    apply.add_argument("preset", help="a preset file (params/*.yaml) stating the keys it changes")
    apply.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="one key, its value as YAML")
    apply.add_argument("--out", default=PARAMS_FILE, help="where the params go (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        params = resolve_params(args.preset, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    write_params(params, args.out, "python -m survlm.config apply " + " ".join([args.preset, *args.overrides])
                 + "\nsurvlm.config's defaults (the committed params.yaml), the preset's keys, then the overrides.")
    print(f"{args.out}: the defaults, {args.preset}" + (f", {len(args.overrides)} override(s)" if args.overrides
                                                       else ""))


if __name__ == "__main__":
    main()
