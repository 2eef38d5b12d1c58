"""The recipe's common sections: model, lora, data, sampling, train, eval, hub, toy, and `RecipeBase`
that holds them. A method's own section lives in its folder (`nega/align/d2o/config.py`) and joins a
recipe through the method table (`nega.config.registry`).

Only pydantic and yaml are imported here; numbers are finite and counts bounded (`nega.bounds`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nega.bounds import (
    MAX_TOKENS,
    SECTION_CONFIG,
    Count,
    Epochs,
    LearningRate,
    Rows,
    Seed,
    Steps,
    Tokens,
    existing_path,
)


class Strict(BaseModel):
    model_config = ConfigDict(**SECTION_CONFIG, validate_assignment=True)


class ModelConfig(Strict):
    name: str = Field(
        description="hub id, local folder, .gguf file, a packaged model (`nega models`, e.g. "
        "smollm2-135m-instruct), or 'toy' (tiny model built from the `toy` section)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = Field(
        False, description="run code shipped with the model; only for models you trust"
    )
    revision: str | None = None
    max_length: int = Field(
        1024, ge=8, le=MAX_TOKENS, description="prompt + response tokens kept for training and scoring"
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="load the base weights in 4 bits (NF4, QLoRA) or 8 bits through bitsandbytes; training "
        "then goes through the LoRA adapter; needs a CUDA GPU and pip install 'nega[qlora]'",
    )

    @field_validator("quantization")
    @classmethod
    def _quantization_possible(cls, v: str) -> str:
        problem = quantization_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("name")
    @classmethod
    def _local_folder_exists(cls, v: str) -> str:
        from nega.models import model_problem

        problem = model_problem(v)
        if problem is not None:
            raise ValueError(problem)
        if v.startswith(("./", "../", "/", "~")):
            existing_path(v)
            return os.path.expanduser(os.path.expandvars(v))
        return v


def quantization_problem(value: str) -> str | None:
    """Why `model.quantization: value` cannot load on this machine (bitsandbytes quantizes on CUDA
    only), or None. torch is imported only when quantization is asked for."""
    if value == "none":
        return None
    import importlib.util

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install 'nega[qlora]')")
    import torch

    if not torch.cuda.is_available():
        missing.append(f"a CUDA GPU (torch {torch.__version__} sees none)")
    if not missing:
        return None
    return (
        f"{value} loading runs through bitsandbytes on a CUDA GPU and needs {' and '.join(missing)}; "
        "on this machine set model.quantization=none"
    )


# Models below this many parameters train without gradient checkpointing by default: recomputing
# their activations saves little memory and costs a second forward pass.
CHECKPOINTING_MIN_PARAMS = 100_000_000


def checkpointing_by_default(model_name: str) -> bool:
    """`train.gradient_checkpointing` when the recipe does not set it: on for real models, off for the
    toy model and for local model folders whose config.json counts under CHECKPOINTING_MIN_PARAMS."""
    if model_name == "toy":
        return False
    folder = Path(os.path.expanduser(model_name))
    if not (folder / "config.json").is_file():
        return True  # a hub id, packaged or GGUF model: the recipes' real models
    from nega.plan import model_facts

    params = model_facts(str(folder)).params
    return params is None or params >= CHECKPOINTING_MIN_PARAMS


class LoraConfig(Strict):
    enabled: bool = True
    r: Count = 16
    alpha: Count = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


# nega's own shapes, then TRL's dataset types by their names (each standard or conversational); the
# columns of each and the methods reading it are in `nega.data.FORMATS`.
DataFormat = Literal[
    "auto",
    "prompt-rejected",
    "messages",
    "hh-rlhf",
    "pku-saferlhf",
    "problems",
    "rationales",
    "toy",
    "preference",
    "unpaired_preference",
    "prompt_completion",
    "stepwise_supervision",
]


class DataConfig(Strict):
    dataset: str | None = Field(
        None,
        description="hub dataset id, a local file or folder, a builder (json, csv, parquet) with "
        "data.data_files, or 'toy' for the toy world's data; data:<dir>/<file> names the data folder's",
    )
    config: str | None = Field(None, description="configuration of a hub dataset, e.g. main of openai/gsm8k")
    name: str | None = Field(None, description="alias of data.config (datasets' `name`)")
    data_dir: str | None = Field(
        None, description="subfolder of a hub dataset, e.g. harmless-base of Anthropic/hh-rlhf"
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None,
        description="files of the dataset, globs allowed; a mapping names each split's files "
        "({train: a/*.jsonl, test: b.jsonl}); relative to data.dataset when that is a folder",
    )
    path: str | None = Field(
        None,
        description="local jsonl/json/csv/parquet file (overrides dataset); data:<dir>/<file> names a file "
        "of the data folder ($NEGA_DATA, else ../shared/data)",
    )
    split: str = "train"
    format: DataFormat = Field(
        "auto", description="row shape (README, Your own data); auto: from the columns"
    )
    fields: dict[str, str] = Field(default_factory=dict, description="renames {nega_name: column_name}")
    shuffle: bool = Field(False, description="shuffle the rows (with the recipe's seed) before data.limit")
    streaming: bool = Field(
        False, description="read the rows as a stream (no local Arrow copy); data.shuffle uses a buffer"
    )
    limit: Rows | None = Field(None, description="use the first N rows (after data.shuffle)")
    on_bad_row: Literal["error", "skip"] = "error"

    _check_path = field_validator("path")(classmethod(lambda cls, v: existing_path(v)))

    @field_validator("dataset")
    @classmethod
    def _data_folder_name(cls, v: str | None) -> str | None:
        # `data:` names the data folder's files here too; a hub id or builder name stays as given.
        return existing_path(v) if v is not None and v.startswith("data:") else v

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.dataset is None and self.path is None:
            raise ValueError(
                "set data.dataset (hub id, local file or folder, or 'toy') or data.path (local file)"
            )
        if self.name is not None and self.config is not None and self.name != self.config:
            raise ValueError(
                f"data.name {self.name!r} and data.config {self.config!r} differ; set one of them"
            )
        if self.path is not None and self.data_files is not None:
            raise ValueError("data.path names one file; for several use data.data_files (without data.path)")
        return self


class SamplingConfig(Strict):
    backend: Literal["auto", "vllm", "hf", "server"] = "auto"
    n: Count = Field(8, description="completions per prompt")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: Tokens = 256
    seed: Seed = 0
    batch_size: Count = Field(64, description="prompts per generate call (HF backend)")
    tensor_parallel_size: Count | None = Field(
        None, description="vLLM GPUs per replica; default: the largest size that divides the model's heads"
    )
    data_parallel_size: Count | None = Field(
        None,
        description="vLLM replicas, each an engine in its own process on tensor_parallel_size GPUs; a call's "
        "prompts are split between them; default: visible GPUs // tensor_parallel_size, 1 on a CPU",
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    kv_cache_gib: Count = Field(1, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    enable_prefix_caching: bool = True
    adapter_mode: Literal["auto", "lora", "merged"] = Field(
        "auto",
        description="how vLLM samples a trained LoRA adapter: lora (applied at every step; one engine serves "
        "every adapter) or merged (folded into a copy of the weights, an engine per adapter); auto = merged "
        "on a CPU, where vLLM's LoRA kernels run at about a third of its plain speed, lora on GPUs",
    )
    block_size: Count | None = Field(
        None,
        description="vLLM KV block tokens; default: vLLM's on GPU, 32 on CPU (prefix caching reuses whole blocks)",
    )
    server_url: str | None = Field(None, description="OpenAI-compatible endpoint for backend: server")
    server_timeout: float = Field(120.0, gt=0)
    server_retries: int = Field(3, ge=0, le=1000)

    # How the sampling is spread over engines, not what is sampled: requests are seeded by their index
    # in the caller's list, so the samples are the same with any number of replicas.
    LAYOUT_FIELDS: ClassVar[frozenset[str]] = frozenset({"data_parallel_size"})

    def stage_key(self) -> dict:
        """The fields a sampling stage's hash covers: all but the layout ones."""
        return self.model_dump(exclude=self.LAYOUT_FIELDS)

    @model_validator(mode="after")
    def _server_needs_url(self) -> SamplingConfig:
        if self.backend == "server" and not self.server_url:
            raise ValueError("sampling.backend 'server' needs sampling.server_url (e.g. http://host:8000/v1)")
        if self.backend in ("hf", "server") and (self.data_parallel_size or 1) > 1:
            raise ValueError(
                f"sampling.data_parallel_size={self.data_parallel_size} starts vLLM replicas, but "
                f"sampling.backend is {self.backend}; set sampling.backend to vllm or auto, or remove it"
            )
        return self


class DeepSpeedConfig(Strict):
    stage: Literal[0, 2, 3] = 0
    offload_optimizer: bool = False
    offload_params: bool = False


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


# TrainConfig fields that leave the trained weights unchanged: not part of a training stage's hash.
# Gradient checkpointing recomputes activations instead of keeping them: the same weights, less memory.
BOOKKEEPING_FIELDS = frozenset({"save_steps", "logging_steps", "report_to", "gradient_checkpointing"})


class TrainConfig(Strict):
    lr: LearningRate = 5e-6
    epochs: Epochs = 1.0
    max_steps: Steps | None = Field(None, description="overrides epochs when set")
    batch_size: Count = Field(8, description="prompts per device per step")
    grad_accum: Count = 1
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    save_steps: Steps = 50
    logging_steps: Steps = 10
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass (less memory, one more forward); a "
        "recipe that does not set it gets it on for models of 100M parameters or more, off for the toy",
    )
    bf16: bool = False
    prefix_sharing: bool = Field(
        True,
        description="compute each prompt once for all of its responses in a step (one packed row with a "
        "block attention mask); off, or with flash attention, every response gets its own padded row",
    )
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=list,
        description="experiment trackers the Trainer logs to (none by default): tensorboard (event files in "
        "each training stage's tensorboard/ folder), wandb (offline unless WANDB_MODE says otherwise), trackio "
        "(local); each needs its package, e.g. pip install 'nega[tensorboard]'",
    )

    @field_validator("report_to")
    @classmethod
    def _tracker_installed(cls, v: list[str]) -> list[str]:
        import importlib.util

        missing = [name for name in v if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None]
        if missing:
            extras = ",".join(missing)
            raise ValueError(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                f"pip install 'nega[{extras}]'"
            )
        return list(dict.fromkeys(v))

    def stage_key(self) -> dict:
        """The fields a training stage's hash covers: everything that changes the trained weights.

        How often a stage checkpoints or logs and where it reports are left out, so changing them reuses
        a finished stage and resumes a killed one from its checkpoints instead of training it again.
        """
        return self.model_dump(exclude=BOOKKEEPING_FIELDS)


class HarmEvalConfig(Strict):
    prompts: str | list[str] = Field(
        "advbench",
        description="advbench | hh-harmless | xstest | toy | path to jsonl/csv, or a list of them "
        "(each its own stage eval-harm-<set> and metrics harm-<set>/...)",
    )
    scorer: str = Field(
        "refusal",
        description="refusal | toy | classifier:<model> | judge:<model> | module:function "
        "(your own `(prompts, completions, **columns) -> list[float]`; nega imports and runs that code)",
    )
    limit: Rows | None = 100
    max_tokens: Tokens = 128

    @field_validator("prompts")
    @classmethod
    def _distinct_sets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one prompt set")
            if len(set(v)) != len(v):
                raise ValueError("a prompt set is listed twice")
        return v

    @property
    def prompt_sets(self) -> list[str]:
        return [self.prompts] if isinstance(self.prompts, str) else list(self.prompts)

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        from nega.rewards.scorer_spec import check_scorer_spec

        return check_scorer_spec(v)


class ReasoningEvalConfig(Strict):
    data: str = Field("gsm8k", description="gsm8k | math500 | svamp | toy | path to jsonl")
    samples: Count = 1
    limit: Rows | None = 100
    max_tokens: Tokens = 256
    temperature: float = Field(0.7, ge=0, description="for the k samples; accuracy is always greedy")


class EvalConfig(Strict):
    before: bool = Field(True, description="also evaluate the starting model")
    harm: HarmEvalConfig | None = None
    reasoning: ReasoningEvalConfig | None = None


class HubConfig(Strict):
    repo_id: str | None = None
    private: bool = True
    merge: bool = False
    license: str | None = Field(
        None,
        description="license id on the model card (e.g. apache-2.0); default: the base model's when nega "
        "knows it (`nega models`), apache-2.0 for the toy model",
    )


class ToyConfig(Strict):
    world: Literal["harm", "reasoning", "rationale"]
    size: Literal["tiny", "small", "base", "25m", "125m", "350m"] = "tiny"
    steps: Steps = Field(600, description="training steps of the toy model on the world's SFT corpus")
    lr: LearningRate = 3e-3
    batch_size: Count = 32
    n_train: Rows = Field(400, description="rows of the method's dataset")
    n_test: Rows = 200
    options: dict[str, Any] = Field(default_factory=dict, description="world parameters, e.g. harm_rate")


class RecipeBase(Strict):
    name: str = Field(description="run name; the run directory is <output_dir>/<name>")
    description: str = ""
    seed: Seed = 0
    output_dir: str = "runs"
    model: ModelConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    toy: ToyConfig | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' or '-' (it names a folder)")
        return v

    def to_yaml(self) -> str:
        """The recipe resolved, every default filled in, as `nega validate` prints it."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @model_validator(mode="after")
    def _toy_section(self) -> RecipeBase:
        uses_toy = self.model.name == "toy" or self.data.dataset == "toy"
        if uses_toy and self.toy is None:
            raise ValueError("model.name or data.dataset is 'toy' but the recipe has no `toy:` section")
        return self

    @model_validator(mode="after")
    def _quantized_trains_an_adapter(self) -> RecipeBase:
        if self.model.quantization != "none" and not self.lora.enabled:
            raise ValueError(
                f"model.quantization={self.model.quantization} trains through a LoRA adapter only: set "
                "lora.enabled=true, or model.quantization=none for full fine-tuning"
            )
        return self

    @model_validator(mode="after")
    def _checkpointing_default(self) -> RecipeBase:
        # Decided once here, so the resolved recipe (`nega validate`, the ranks' copy) states it.
        if "gradient_checkpointing" not in self.train.model_fields_set:
            self.train.gradient_checkpointing = checkpointing_by_default(self.model.name)
        return self


Recipe = RecipeBase  # for annotations: every recipe is a RecipeBase with `method` and its section
