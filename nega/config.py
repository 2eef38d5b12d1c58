"""The recipe schema: common sections + one section per method, discriminated on `method`, and the
method table `METHODS` from which the union, `nega run`'s dispatch and the model card derive.

A recipe is one YAML file, validated whole before anything runs. `load_recipe` collects every problem
(unknown keys, keys given twice, bad values, missing files, unknown method, keys the method never
reads) into one `RecipeError` naming the file and each key path. Numbers are finite and counts bounded
(`nega.bounds`). Only pydantic and yaml are imported here (and each method's `config.py`, which
imports only pydantic and `nega.bounds`), so validation is instant.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from nega.align.d2o.config import D2OConfig
from nega.align.stepneg.config import StepNegConfig
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
from nega.distill.qcrd.config import QCRDConfig
from nega.distill.qcrd.config import recipe_warnings as qcrd_warnings
from nega.rewards.rm.config import RMConfig

RECIPES_DIR = Path(__file__).parent / "recipes"


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


# ---------------------------------------------------------------------------------------------------
# The method table: everything nega knows about a method, in one place. The recipe union, the method
# names in error messages, `nega run`'s dispatch and the model card's paper and tags derive from it.
# Adding a method: its folder, one entry here, a recipe under nega/recipes/ and tests (README,
# Development).


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    url: str


@dataclass(frozen=True, eq=False)
class Method:
    """One method of nega.

    `section` is the recipe section named after the method (`d2o:` for d2o), a pydantic model with
    `extra="forbid"`, or None when the method has none. `run` names the function running a whole
    recipe, "module:function" (imported only when a run starts, so `nega validate` stays instant):
    `function(recipe, run: nega.pipeline.Run) -> {label: {metric: value}}`. `paper` and `tags` go on
    the model card. `ignores` maps keys of the common sections that this method never reads to why: a
    recipe setting one fails validation, like an unknown key. `recipe_warnings(recipe) -> [message]`
    names settings that are valid but likely not what the user meant; `load_recipe` warns each.
    """

    section: type[BaseModel] | None
    run: str
    paper: Paper | None = None
    tags: tuple[str, ...] = ()
    ignores: dict[str, str] = field(default_factory=dict)
    recipe_warnings: Callable[[Any], list[str]] | None = None


def _greedy_problems(method: str) -> dict[str, str]:
    """What sft and per-step RL ignore: they grade one greedy answer per held-out problem."""
    why = f"{method} grades one greedy answer per held-out problem (the toy world's, else eval.reasoning's)"
    return {
        "eval.harm": f"{why}; it runs no harm evaluation",
        "eval.reasoning.samples": f"{why}; it draws no samples for pass@k or maj@k",
        "eval.reasoning.temperature": f"{why}; it draws no samples for pass@k or maj@k",
    }


_QCRD_EVAL = "qcrd evaluates its students on the data's test split (qcrd.eval_limit questions)"

METHODS: dict[str, Method] = {
    "sft": Method(section=None, run="nega.sft:run", ignores=_greedy_problems("sft")),
    "d2o": Method(
        section=D2OConfig,
        run="nega.align.d2o.run:run",
        paper=Paper(
            "D²O: distributional dispreference optimization",
            "Duan et al., 2024",
            "https://arxiv.org/abs/2403.03419",
        ),
        tags=("alignment", "safety"),
    ),
    "stepneg": Method(
        section=StepNegConfig,
        run="nega.align.stepneg.run:run",
        paper=Paper(
            "Per-step negative RL (per-step DPO on self-generated negatives)",
            "Setlur et al., 2024",
            "https://arxiv.org/abs/2406.14532",
        ),
        tags=("reasoning", "dpo"),
        ignores=_greedy_problems("stepneg"),
    ),
    "qcrd": Method(
        section=QCRDConfig,
        run="nega.distill.qcrd.run:run",
        paper=Paper(
            "QCRD: quality-guided contrastive rationale distillation",
            "Wang et al.",
            "https://arxiv.org/abs/2405.13014",
        ),
        tags=("distillation",),
        ignores={"eval.harm": _QCRD_EVAL, "eval.reasoning": _QCRD_EVAL},
        recipe_warnings=qcrd_warnings,
    ),
    "rm": Method(
        section=RMConfig,
        run="nega.rewards.rm.run:run",
        paper=Paper(
            "Training language models to follow instructions with human feedback (the reward model, §3.5)",
            "Ouyang et al., 2022",
            "https://arxiv.org/abs/2203.02155",
        ),
        tags=("reward-model", "safety"),
        ignores={
            "sampling": "rm generates nothing; it scores the data's answers",
            "eval.harm": "rm is judged by pairwise accuracy on held-out preference pairs (the rm section)",
            "eval.reasoning": "rm is judged by pairwise accuracy on held-out preference pairs (the rm section)",
        },
    ),
}


def recipe_class(method: str) -> type[RecipeBase]:
    """The recipe model of `method`: the common sections, `method: <name>` and the method's section."""
    return _recipe_class(method, METHODS[method])


@functools.cache
def _recipe_class(name: str, method: Method) -> type[RecipeBase]:
    fields: dict[str, Any] = {"method": (Literal[name], ...)}
    if method.section is not None:
        fields[name] = (method.section, Field(default_factory=method.section))
    return create_model(f"{name}Recipe", __base__=RecipeBase, **fields)


def recipe_adapter() -> TypeAdapter:
    """The recipe union over the method table, discriminated on `method`."""
    return _recipe_adapter(tuple(METHODS.items()))


@functools.cache
def _recipe_adapter(methods: tuple[tuple[str, Method], ...]) -> TypeAdapter:
    classes = tuple(_recipe_class(name, method) for name, method in methods)
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="method")])  # noqa: UP007


def validate_recipe(data: dict) -> RecipeBase:
    """A recipe from plain data (e.g. `recipe.model_dump()` sent to training ranks); raises ValidationError."""
    return recipe_adapter().validate_python(data)


Recipe = RecipeBase  # for annotations: every recipe is a RecipeBase with `method` and its section


class RecipeError(Exception):
    """A recipe that cannot run: every problem at once, with the file and key paths."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"recipe {source} has {len(problems)} {noun}:\n{lines}\n"
            "Fix the recipe file, or override a field with KEY=VALUE (e.g. train.lr=1e-5)."
        )


class RecipeFileError(RecipeError):
    """No recipe to read at all (missing, a folder, unreadable): one line, since no key can fix it."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problems = [problem]
        Exception.__init__(self, f"recipe {source}: {problem}")


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe name -> file, from every YAML under nega/recipes/."""
    return {p.stem: p for p in sorted(RECIPES_DIR.rglob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    """A YAML file, or a built-in recipe's file; a RecipeFileError (one line) when there is neither."""
    path = Path(name_or_path)
    builtins = builtin_recipes()
    is_file_name = path.suffix in (".yaml", ".yml")
    # A folder that happens to share a built-in's name (say, a run folder -o toy-d2o) does not hide it.
    if path.is_dir() and (is_file_name or name_or_path not in builtins):
        raise RecipeFileError(
            str(path), "is a folder, not a recipe file; give a YAML file or a built-in name (`nega recipes`)"
        )
    if is_file_name or (path.exists() and not path.is_dir()):
        if not path.exists():
            raise RecipeFileError(str(path), f"file not found (looked in {os.getcwd()})")
        return path
    if name_or_path in builtins:
        return builtins[name_or_path]
    raise RecipeFileError(
        name_or_path,
        f"no such file and no built-in recipe of that name; built-ins: {', '.join(builtins) or 'none'}",
    )


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, also noting every key given twice in one mapping: YAML keeps the last one
    silently, so a recipe that sets `lr` twice trains with whichever comes second."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_document(self, node: yaml.Node) -> Any:
        self.duplicates.extend(duplicate_keys(node))
        return super().construct_document(node)

    @classmethod
    def parse(cls, text: str) -> tuple[Any, list[str]]:
        """The document in `text` and its duplicate-key problems; raises yaml.YAMLError."""
        loader = cls(text)
        try:
            return loader.get_single_data(), loader.duplicates
        finally:
            loader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def duplicate_keys(node: yaml.Node, path: str = "", seen_nodes: set[int] | None = None) -> list[str]:
    """One problem per key repeated in a mapping of the composed YAML `node`, with its dotted key path
    and both lines."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias met again (anchors can even make a node contain itself)
        return []
    seen_nodes.add(id(node))
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            dotted = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                ident = (key_node.tag, key_node.value)
                if ident in first_line:
                    problems.append(
                        f"{dotted}: key given twice in one section (line {first_line[ident]} and line "
                        f"{line}); YAML would keep the last silently, so remove one"
                    )
                else:
                    first_line[ident] = line
            problems += duplicate_keys(value_node, dotted, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{i}]", seen_nodes)
    return problems


def read_recipe_yaml(path: Path) -> tuple[Any, list[str]]:
    """The parsed YAML of a recipe file and a problem per duplicated key; RecipeError when unreadable."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(source, [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise RecipeFileError(source, f"cannot read it: {exc.strerror or exc}") from None
    try:
        return _RecipeLoader.parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(source, [f"YAML syntax error: {where}{getattr(exc, 'problem', exc)}"]) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-5` -> (["train", "lr"], 1e-05). Values are YAML, so 3, true, [a, b] parse."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
        raise ValueError(f"override {text!r} is not KEY=VALUE with a dotted key (e.g. train.lr=1e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> list[str]:
    """Set each dotted key in `data` (creating sections); returns problems instead of raising."""
    problems = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                problems.append(f"{'.'.join(keys)}: {k!r} is a value, not a section")
                break
            node = node[k]
        else:
            node[keys[-1]] = value
    return problems


def _fields_of(model: type[BaseModel] | None) -> list[str]:
    return sorted(model.model_fields) if model is not None else []


def _section_model(loc: tuple, method: str | None) -> type[BaseModel] | None:
    """The pydantic model at `loc` (for listing allowed keys in unknown-key errors)."""
    model: Any = recipe_class(method) if method in METHODS else RecipeBase
    for part in loc:
        field = (
            model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        )
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def format_validation_errors(exc: ValidationError, method: str | None) -> list[str]:
    problems = []
    for err in exc.errors():
        # A discriminated union puts the tag first: ("d2o", "d2o", "alpha") is the d2o.alpha key.
        loc = err["loc"][1:] if err["loc"] and err["loc"][0] == method else err["loc"]
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_of(_section_model(loc[:-1], method))
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{key}: unknown key{hint}")
        elif err["type"] == "missing":
            problems.append(f"{key}: required but missing")
        elif err["type"] == "union_tag_invalid":
            problems.append(
                f"method: unknown method {err['input'].get('method')!r}; choose one of {', '.join(METHODS)}"
            )
        elif err["type"] == "union_tag_not_found":
            problems.append(f"method: required but missing; choose one of {', '.join(METHODS)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            problems.append(f"{key}: {msg}{shown}")
    return problems


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raises one RecipeError listing every problem."""
    path = resolve_recipe_path(name_or_path)
    source = str(path)
    data, duplicates = read_recipe_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [f"top level must be a mapping of sections, got {type(data).__name__}"])
    problems = duplicates + apply_overrides(data, overrides or [])
    method = data.get("method") if isinstance(data.get("method"), str) else None
    ignored = ignored_keys(data, method)
    try:
        recipe = validate_recipe(data)
    except ValidationError as exc:
        raise RecipeError(source, problems + format_validation_errors(exc, method) + ignored) from None
    if problems or ignored:
        raise RecipeError(source, problems + ignored)
    check = METHODS[recipe.method].recipe_warnings
    for message in check(recipe) if check else []:
        warnings.warn(f"{source}: {message}", UserWarning, stacklevel=2)
    return recipe


def ignored_keys(data: dict, method: str | None) -> list[str]:
    """A problem for every key of `data` that `method` never reads (its table entry's `ignores`).

    A key set to null is no setting (`eval.harm: null` asks for no harm evaluation) and passes."""
    if method not in METHODS:
        return []
    problems = []
    for key, why in METHODS[method].ignores.items():
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            problems.append(f"{key}: method {method} does not use this key: {why}; remove it")
    return problems
