"""Typed schemas for the config groups that mars reads itself.

Hydra composes YAML; `validate()` merges each group into its dataclass so that a misspelt key or
an unknown choice fails at start-up with the group and key named, never later and never silently.
Groups built with `_target_` (trainer, logger, callbacks, augmenter, allocator) are checked by
the constructor they name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # plain dataclasses at import: the model and data layers run without Hydra
    from omegaconf import DictConfig


class ConfigError(ValueError):
    """A configuration value the user must change; the message names the group and key."""


def _choice(group: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{group}.{key}={value!r} is not one of {list(allowed)}")


TRUNCATIONS = ("keep_end", "keep_start")  # which end of a too-long response stays
CANDIDATE_SOURCES = ("alpacaeval_bon", "rewardbench2", "candidates")  # N candidates a prompt, not pairs


@dataclass
class FieldNames:
    """Column names of a generic local file (`data.source=local`)."""

    prompt: Optional[str] = "prompt"  # None: the file has no prompt column
    chosen: str = "chosen"
    rejected: str = "rejected"
    id: Optional[str] = None  # None: ids are "local-<row number>"


@dataclass
class DataConfig:
    """Where the preference pairs come from, how they are split, batched and truncated.

    `source` picks the normaliser; `path` reads a local file instead of the Hub (same result).
    Without `val_path`/`test_path` one file is split with `split_seed` into `train_size`,
    `val_size` and `test_size` pairs (`-1` for train: all that is left; 1,200 for the demo).
    """

    # demo | hh_rlhf | ultrafeedback | pku_saferlhf | rewardbench | local; best-of-N sets (eval.py):
    # alpacaeval_bon | rewardbench2 | candidates (your own: mars/data/candidates.py)
    source: str = "demo"
    path: Optional[str] = None  # local file (json, jsonl, jsonl.gz, parquet, csv)
    hub_name: Optional[str] = None  # Hub dataset name, used when `path` is unset
    hub_data_dir: Optional[str] = None  # e.g. "harmless-base" for Anthropic/hh-rlhf
    hub_subset: Optional[str] = None  # the dataset's config name, where it has several
    split: str = "train"  # Hub split read for `path`-less sources
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    val_split: Optional[str] = None  # Hub split for validation (instead of splitting `split`)
    test_split: Optional[str] = None
    fields: FieldNames = field(default_factory=FieldNames)
    on_error: str = "raise"  # raise | skip: skip counts bad records and prints a summary
    train_size: int = -1
    val_size: int = 200
    test_size: int = 200
    split_seed: int = 0
    batch_size: int = 16  # pairs per training batch and rank (2x sequences in the forward)
    # Pairs per validation / prediction batch: 16 is fastest on CPU (less padding, cache-sized;
    # docs/benchmarks.md); a GPU wants more (the paper presets use 64).
    eval_batch_size: int = 16
    length_grouping: bool = True  # batch pairs of similar length: less padding
    # Padding-free batches: every sequence of a batch in one row, attention within each sequence,
    # batches filled up to `max_tokens_per_batch` tokens (both sides of a pair stay together)
    # instead of `batch_size` pairs; the prediction pass and eval.py pack the same way.
    packing: bool = False
    # Decoders: each pair one sequence prefix · chosen · rejected, the tokens both sides share (the
    # prompt) computed once; packed batches of `max_tokens_per_batch` as above, whatever `packing`
    prefix_sharing: bool = False
    # Both of the above on an architecture mars has not checked them on (mars.model.backbone
    # PACKING_VERIFIED): at your own risk, with a warning
    allow_unverified_packing: bool = False
    max_tokens_per_batch: int = 4096
    num_workers: int = 0
    limit: Optional[int] = None  # best-of-N sets: the first K prompts only (smoke runs)

    def __post_init__(self) -> None:
        _choice("data", "source", self.source,
                ("demo", "hh_rlhf", "ultrafeedback", "pku_saferlhf", "rewardbench", "local") + CANDIDATE_SOURCES)
        _choice("data", "on_error", self.on_error, ("raise", "skip"))


@dataclass
class BackboneConfig:
    """The transformer under the one-output reward head.

    `name_or_path` is a Hub name or a local folder; `random_init` builds the architecture of
    `name_or_path` from its config with `config_overrides` applied and random weights (tests).
    """

    name_or_path: str = "minilm"  # "minilm": the embedded all-MiniLM-L6-v2 package
    tokenizer: Optional[str] = None  # defaults to name_or_path
    max_length: int = 256  # tokens per prompt+response sequence, special tokens included
    min_prompt_tokens: int = 32  # prompt tokens kept before the response is cut (see truncation)
    # Which end of a too-long response stays: keep_end (where a decoder reads the reward) or
    # keep_start (pairs whose answers differ in their opening)
    truncation: str = "keep_end"
    random_init: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    chat_template: str = "auto"  # auto: use the tokenizer's chat template where it has one | never
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    # null: transformers' default (SDPA; mars gives it a variable-length path for packed batches);
    # flash_attention_2 on CUDA where flash-attn is installed; eager
    attn_implementation: Optional[str] = None
    # Every dropout of the model (attention, hidden, head); null keeps the checkpoint's. Off by
    # default, as in TRL and OpenRLHF: it adds noise to each pair's margin, and on CPU attention
    # dropout also forces the unfused attention path (a step is ~25% slower, docs/benchmarks.md).
    dropout: Optional[float] = 0.0
    model_type: Optional[str] = None  # build this architecture from scratch (random weights, tests)
    # The reward's token: "auto" reads it from the architecture (decoder-only LMs: last real
    # token; encoders: first token through their own pooler).
    kind: str = "auto"  # auto | encoder | decoder
    train_layers: Optional[int] = None  # gone: the finetune group decides what trains

    def __post_init__(self) -> None:
        _choice("backbone", "chat_template", self.chat_template, ("auto", "never"))
        _choice("backbone", "kind", self.kind, ("auto", "encoder", "decoder"))
        _choice("backbone", "truncation", self.truncation, TRUNCATIONS)
        if self.train_layers is not None:
            raise ConfigError(f"backbone.train_layers={self.train_layers} is gone: what trains is the finetune group: "
                             "finetune=full (was -1), finetune=head (was 0), finetune=top_layers finetune.layers=k "
                             "(was k), or finetune=lora")
        if self.max_length < 8:
            raise ConfigError(f"backbone.max_length={self.max_length} is too small")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"backbone.dropout={self.dropout}: use a probability in [0, 1) or null")


@dataclass
class FinetuneConfig:
    """What trains (mars/model/finetune.py): full | lora | qlora | head | top_layers.

    LoRA (peft): rank `r`, scaling `alpha`, adapter `dropout`, `target_modules` ("all-linear": every
    linear layer but the head). The reward head always trains and is always saved; the export
    merges the adapters into the weights, and `export_adapter` also writes the peft adapter folder.
    `top_layers` trains the top `layers` layers on the cached output of the ones below.
    """

    name: str = "full"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names
    layers: int = 2
    export_adapter: bool = False

    def __post_init__(self) -> None:
        _choice("finetune", "name", self.name, ("full", "lora", "qlora", "head", "top_layers"))
        if self.name == "top_layers" and self.layers < 1:
            raise ConfigError(f"finetune.layers={self.layers}: top_layers trains at least one layer")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then `schedule` decay to zero over the run."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    schedule: str = "linear"  # linear | cosine | constant
    head_lr: Optional[float] = None  # a separate learning rate for the fresh reward head

    def __post_init__(self) -> None:
        _choice("optim", "schedule", self.schedule, ("linear", "cosine", "constant"))


@dataclass
class LossConfig:
    """Bradley–Terry loss −log σ(Δ − m) + c·mean((r⁺ + r⁻)²)."""

    target_margin: float = 0.0  # m; a pair's own `margin` (data column `margin`) overrides it
    center_rewards_coef: float = 0.0  # c: keeps rewards centred on zero (as TRL/RLHFlow)


@dataclass
class LoopConfig:
    """How rounds grow the training set (the allocator decides *where* the budget goes)."""

    budget: int = 400  # B^t: synthetic pairs per round
    budget_schedule: Optional[list[int]] = None  # B^1, B^2, …; the last value repeats
    warmup_epochs: int = 1  # epochs on D₀ alone before the first allocation (an untrained head's margins are noise)
    accumulate: bool = True  # True: D^t = D^{t−1} ∪ D_syn^t (paper); False: D₀ ∪ D_syn^t (authors' code)
    crossing: str = "paper"  # paper: (n⁺+1)(n⁻+1)−1 crossings | pool: variant × variant from a pool
    pool_size: int = 5  # variants per response in pool mode (the authors use 5: 25 crossings)
    vary_prompt: bool = False  # pool mode: the authors also vary the prompt
    fisher_bins: int = 5  # Figure-5 bins by |Δ|
    fisher_dim: int = 16  # feature directions kept for the bin Fisher matrices

    def __post_init__(self) -> None:
        if self.crossing not in ("paper", "pool"):
            raise ConfigError(f"loop.crossing={self.crossing!r} is not one of ['paper', 'pool']")

    def budget_for(self, t: int) -> int:
        if self.budget_schedule:
            return int(self.budget_schedule[min(t, len(self.budget_schedule)) - 1])
        return self.budget


@dataclass
class ProgressConfig:
    """How a fit shows its progress (mars/lightning/progress.py). Lightning's bar redraws a terminal
    line; in a file (nohup, SLURM, `> train.log`) it writes nothing until the fit ends (Rich's bar)
    or carriage-return redraws (tqdm's).

    `mode`: auto (the bar where stderr is a terminal, log lines otherwise) | bar | log. A line comes
    every `every_n_steps` training batches or `every_seconds` seconds, whichever is first (null:
    that trigger off), and at each epoch's last batch.
    """

    mode: str = "auto"
    every_n_steps: Optional[int] = 100
    every_seconds: Optional[float] = 60.0

    def __post_init__(self) -> None:
        _choice("progress", "mode", self.mode, ("auto", "bar", "log"))
        for key in ("every_n_steps", "every_seconds"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"progress.{key}={getattr(self, key)}: use a positive number or null")


SCHEMAS = {"data": DataConfig, "backbone": BackboneConfig, "finetune": FinetuneConfig, "optim": OptimConfig,
           "loss": LossConfig, "loop": LoopConfig,
           "progress": ProgressConfig}


def register_schemas() -> None:
    """`<group>/schema` for every typed group: the group files of data, backbone and finetune
    start from it, and train.yaml takes optim, loss, loop and progress from it whole, so each default is
    written once, here, and composed groups reject unknown keys while composing."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)


def typed(cfg: DictConfig, group: str):
    """The group `group` of `cfg` as its dataclass; unknown keys and bad values raise."""
    from omegaconf import OmegaConf

    schema = SCHEMAS[group]
    try:
        node = OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=False)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except Exception as e:  # omegaconf's message names the key; add the group
        raise ConfigError(f"config group '{group}': {e}") from None
    return OmegaConf.to_object(merged)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check every typed group of a composed config; returns them as dataclasses."""
    return {g: typed(cfg, g) for g in SCHEMAS if g in cfg}


__all__ = [
    "ConfigError", "FieldNames", "DataConfig", "BackboneConfig", "FinetuneConfig", "OptimConfig", "LossConfig",
    "LoopConfig", "ProgressConfig", "typed", "validate",
]
