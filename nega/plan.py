"""What runs where: the GPU layout of a recipe as a pure function of the recipe and the device facts.

    plan = make_plan(recipe, DeviceFacts(gpus=8, gib_per_gpu=80))   # or DeviceFacts.detect()

`make_plan` decides, from the model's architecture (`ModelFacts`, read from its config.json) and the
devices, everything a run would otherwise decide deep inside its stages:

- sampling: the vLLM engine's dtype (bfloat16 on a GPU whenever an adapter is active, since vLLM's
  LoRA kernels take only 16-bit weights, and whenever the checkpoint is float32; the checkpoint's own
  dtype on a CPU), its tensor-parallel size (the largest that divides both the attention-head and
  the KV-head count and is at most the GPU count) and the data-parallel replicas left over;
- the device of reference log-probs, adapter merges and classifier scorers (`cuda:0` or `cpu`);
- training: one process per GPU through the launcher (never `nn.DataParallel`), the ZeRO stage and
  gradient checkpointing the recipe asks for;
- a memory estimate per GPU for training and for sampling, whether each fits, and which recipe keys
  would make it fit.

The stages read the same functions (`sampling_layout`, `engine_dtype`, `work_device`), so what
`nega plan` prints is what `nega run` does. Only the standard library is imported here; torch is
imported by `DeviceFacts.detect()` alone.

Memory estimates are deliberately simple and err on the high side; each part is one line below:

training, per GPU
    weights      parameters x bytes per weight (2 for bf16/fp16, 4 for fp32, 0.5 for 4-bit),
                 divided over the processes under ZeRO-3
    lora         adapter parameters x 4 (peft keeps adapters in float32)
    gradients    trainable parameters x 4 for an adapter, x bytes per weight for full fine-tuning;
                 divided under ZeRO-2 and ZeRO-3
    optimizer    trainable parameters x 8 (AdamW's two float32 moments; x 12 with DeepSpeed's float32
                 master copy of 16-bit weights); divided under ZeRO-2/3, 0 when offloaded to the CPU
    activations  tokens per step x layers x (6 hidden + 2 KV width + 4 intermediate) values kept for
                 backward; with gradient checkpointing one hidden vector per token per layer plus one
                 layer's full set. Tokens per step = train.batch_size x sequences per example (D²O: the
                 negative and K self-samples) x model.max_length
    logits       tokens per step x vocabulary x 2 (the logits and their gradient)
    runtime      1 GiB: CUDA context and allocator slack
sampling (vLLM), per GPU
    weights      parameters x bytes of the engine dtype / tensor-parallel size
    lora         two adapter slots at the recipe's rank
    kv_cache     one sequence of the model's full context (what vLLM needs to start):
                 2 x layers x KV heads x head size x bytes x tokens / tensor-parallel size
    runtime      1.5 GiB: CUDA graphs and the activation peak vLLM profiles at start
  against `sampling.gpu_memory_utilization` x GPU memory; the room left for the KV cache is also given
  in sequences of model.max_length + sampling.max_tokens tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nega.models import ModelError

GIB = 2**30
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
TRAIN_RUNTIME_GIB = 1.0
SAMPLING_RUNTIME_GIB = 1.5
MAX_LORAS = 2  # adapter slots of a vLLM engine (nega.sampling.vllm); base + the adapter being sampled


class PlanError(ModelError):
    """A recipe whose layout cannot work on these devices; the message names the key and the fix."""


# ---------------------------------------------------------------------------------------------------
# Facts


@dataclass(frozen=True)
class DeviceFacts:
    """The accelerators a run sees: `gpus` GPUs of `gib_per_gpu` GiB each, or none (a CPU run)."""

    gpus: int = 0
    gib_per_gpu: float = 0.0
    name: str = ""
    assumed: bool = False  # given by the user (`--assume-gpus`), not detected

    @classmethod
    def detect(cls) -> DeviceFacts:
        """This process's visible GPUs (CUDA_VISIBLE_DEVICES applies) through torch.cuda."""
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return cls()
        props = torch.cuda.get_device_properties(0)
        return cls(torch.cuda.device_count(), round(props.total_memory / GIB, 1), props.name)

    @classmethod
    def parse(cls, text: str) -> DeviceFacts:
        """`8x80` (8 GPUs of 80 GiB), `1x24GiB`, or `cpu` / `0`; ValueError naming the form otherwise."""
        spec = text.strip().lower()
        if spec in ("cpu", "0", "none"):
            return cls(assumed=True)
        found = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+(?:\.\d+)?)\s*(?:gib|gb|g)?", spec)
        if not found or int(found[1]) < 1 or float(found[2]) <= 0:
            raise ValueError(
                f"--assume-gpus {text!r} is not GPUSxGIB: write e.g. 8x80 (8 GPUs of 80 GiB) or cpu"
            )
        return cls(int(found[1]), float(found[2]), "assumed", assumed=True)


@dataclass(frozen=True)
class ModelFacts:
    """What the layout needs to know about a model; None where unknown (see `note`)."""

    name: str
    source: str  # where the facts were read
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    layers: int | None = None
    vocab: int | None = None
    params: int | None = None
    max_positions: int | None = None
    dtype: str = "auto"  # the checkpoint's: float32, bfloat16, float16, or auto (unknown)
    local: bool = False  # read from a model folder on disk (the folder the engine will load)
    note: str = ""

    @property
    def known(self) -> bool:
        return None not in (self.heads, self.kv_heads, self.hidden, self.layers, self.vocab, self.params)

    def lora_params(self, r: int, target_modules: str | list[str] = "all-linear") -> int:
        """Adapter parameters at rank `r`: r x (inputs + outputs) of every targeted linear layer."""
        if not self.known or self.intermediate is None:
            return 0
        kv = self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        shapes = {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }
        if target_modules != "all-linear":
            wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
            shapes = {k: v for k, v in shapes.items() if k in wanted}
        return r * self.layers * sum(i + o for i, o in shapes.values())


def facts_from_config(name: str, config: dict, source: str, *, local: bool = False) -> ModelFacts:
    """ModelFacts from a transformers config.json's contents (Llama/Qwen/Mistral/GPT-2 style keys).

    The parameter count is computed from the shapes: embeddings, per layer the attention projections
    (with biases where the architecture has them), a gated MLP (three matrices; two for GPT-2 style
    models) and two norms, the final norm and an untied output layer."""
    cfg = {**config, **config.get("text_config", {})}

    def first(*keys, default=None):
        return next((cfg[k] for k in keys if cfg.get(k) is not None), default)

    heads = first("num_attention_heads", "n_head")
    hidden = first("hidden_size", "n_embd", "d_model")
    layers = first("num_hidden_layers", "n_layer", "num_layers")
    vocab = first("vocab_size")
    kv_heads = first("num_key_value_heads", "num_kv_heads", default=heads)
    if cfg.get("multi_query"):
        kv_heads = 1
    head_dim = first("head_dim", default=hidden // heads if hidden and heads else None)
    intermediate = first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden if hidden else None)
    dtype = first("dtype", "torch_dtype", default="auto")
    dtype = dtype if dtype in DTYPE_BYTES else "auto"
    params = None
    if None not in (heads, hidden, layers, vocab, kv_heads, head_dim):
        q, kv = heads * head_dim, kv_heads * head_dim
        gated = cfg.get("hidden_act", "silu") in ("silu", "swiglu", "gelu_pytorch_tanh") and (
            cfg.get("model_type") != "gpt2"
        )
        bias = cfg.get("attention_bias", cfg.get("model_type") == "qwen2")
        per_layer = hidden * q + 2 * hidden * kv + q * hidden + (3 if gated else 2) * hidden * intermediate
        per_layer += (q + 2 * kv) * bool(bias) + 2 * hidden
        tied = cfg.get("tie_word_embeddings", True)
        params = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
    missing = [k for k, v in (("heads", heads), ("hidden size", hidden), ("layers", layers)) if v is None]
    return ModelFacts(
        name=name,
        source=source,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        vocab=vocab,
        params=params,
        max_positions=first("max_position_embeddings", "n_positions", "max_seq_len"),
        dtype=dtype,
        local=local,
        note=f"config.json has no {', '.join(missing)}" if missing else "",
    )


def _qwen25(hidden: int, intermediate: int, layers: int, heads: int, kv: int, vocab: int, tied: bool) -> dict:
    return {
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    }


# The architectures of the built-in recipes' models (from each model's config.json on the Hub), so that
# `nega plan` gives their layout offline with an empty Hugging Face cache.
KNOWN_CONFIGS: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    **{
        f"Qwen/Qwen2.5-{size}{suffix}": _qwen25(*shape)
        for size, shape in {
            "0.5B": (896, 4864, 24, 14, 2, 151936, True),
            "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
            "7B": (3584, 18944, 28, 28, 4, 152064, False),
        }.items()
        for suffix in ("", "-Instruct")
    },
}


def model_facts(name: str, *, revision: str | None = None, fetch: bool = False) -> ModelFacts:
    """The facts of `model.name`, from the first of: a local model folder's config.json; a packaged
    model's converted folder (else its source model's entry in KNOWN_CONFIGS, as float32, the dtype
    conversion writes); the Hugging Face cache; KNOWN_CONFIGS; with `fetch`, the Hub. Else unknown,
    with a note saying how to make them known. The toy model's facts come from `toy_facts`."""
    from nega.models import KNOWN_MODELS, converted_folder, packaged_gguf

    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return _read_config(name, path / "config.json", f"{path / 'config.json'}", local=True)
    if name in KNOWN_MODELS:
        known = KNOWN_MODELS[name]
        try:
            folder = converted_folder(packaged_gguf(name))
        except ModelError:
            folder = None
        if folder is not None:
            return _read_config(name, folder / "config.json", f"{folder / 'config.json'}", local=True)
        if known.source in KNOWN_CONFIGS:
            # The engine loads the converted local folder, which conversion writes in float32.
            config = {**KNOWN_CONFIGS[known.source], "torch_dtype": "float32"}
            source = f"nega's table ({known.source}, converted to float32 on first use)"
            return facts_from_config(name, config, source, local=True)
    if path.suffix == ".gguf" or name.startswith(("/", "./", "../", "~")):
        return ModelFacts(
            name, "unknown", note=f"{name} has no config.json yet (a .gguf converts on first use)"
        )
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # not a valid repo id, or no huggingface_hub: nothing cached to read
        cached = None
    if isinstance(cached, str):
        return _read_config(name, Path(cached), "the Hugging Face cache")
    if name in KNOWN_CONFIGS:
        return facts_from_config(name, KNOWN_CONFIGS[name], "nega's table of known models")
    if fetch:
        try:
            from huggingface_hub import hf_hub_download

            return _read_config(
                name, Path(hf_hub_download(name, "config.json", revision=revision)), "the Hub"
            )
        except Exception as exc:  # offline or no such repo: the layout falls back to safe defaults
            return ModelFacts(name, "unknown", note=f"could not read {name}'s config.json: {exc}")
    return ModelFacts(
        name,
        "unknown",
        note=f"{name}'s config.json is not in the local Hugging Face cache; run "
        f"`huggingface-cli download {name} config.json` (or give a local folder) for its layout",
    )


def _read_config(name: str, path: Path, source: str, *, local: bool = False) -> ModelFacts:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return ModelFacts(name, "unknown", note=f"cannot read {path}: {exc}")
    return facts_from_config(name, config, source, local=local)


def toy_facts(toy_cfg) -> ModelFacts:
    """The facts of the toy model a recipe's `toy:` section builds (nega.toy.model.SIZES)."""
    from nega.toy.model import SIZES, VOCAB_SIZE

    size = SIZES[toy_cfg.size]
    config = {
        "model_type": "llama",
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.heads,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    return facts_from_config("toy", config, f"the toy model ({toy_cfg.size})", local=True)


def recipe_model_facts(recipe, *, fetch: bool = False) -> ModelFacts:
    if recipe.model.name == "toy" and recipe.toy is not None:
        return toy_facts(recipe.toy)
    return model_facts(recipe.model.name, revision=recipe.model.revision, fetch=fetch)


# ---------------------------------------------------------------------------------------------------
# Decisions, one function each; the stages call these.


def work_device(devices: DeviceFacts) -> str:
    """Where reference log-probs, adapter merges and classifier scorers run: the first GPU, else the CPU."""
    return "cuda:0" if devices.gpus > 0 else "cpu"


def engine_dtype(facts: ModelFacts, devices: DeviceFacts, *, adapters: bool) -> str:
    """The vLLM engine's dtype. On a GPU: bfloat16 whenever an adapter is active (vLLM's LoRA kernels
    take only 16-bit weights) and for a float32 checkpoint; else the checkpoint's. On a CPU: the dtype
    of the checkpoint folder (vLLM's own "auto" may run a float32 checkpoint in bfloat16), "auto" for a
    hub id."""
    if devices.gpus == 0:
        return facts.dtype if facts.local else "auto"
    if adapters or facts.dtype in ("float32", "auto"):
        return "bfloat16"
    return facts.dtype


def tensor_parallel_sizes(facts: ModelFacts, gpus: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for this model on `gpus` GPUs: the sizes up to `gpus` that
    divide both the attention-head and the KV-head count (1 alone when the heads are unknown)."""
    if facts.heads is None or facts.kv_heads is None:
        return [1]
    return [t for t in range(1, max(1, gpus) + 1) if facts.heads % t == 0 and facts.kv_heads % t == 0]


def resolve_adapter_mode(mode: str, devices: DeviceFacts) -> str:
    """`sampling.adapter_mode`: `auto` merges adapters on a CPU (vLLM's CPU LoRA kernels are slow) and
    applies them as LoRA on GPUs."""
    if mode != "auto":
        return mode
    return "lora" if devices.gpus > 0 else "merged"


@dataclass(frozen=True)
class SamplingLayout:
    """How sampling runs: backend, engine dtype, tensor-parallel x data-parallel over the GPUs."""

    backend: str  # vllm, hf or server
    dtype: str
    tensor_parallel_size: int
    data_parallel_size: int
    gpus: int  # visible GPUs (0: CPU)
    adapter_mode: str
    notes: tuple[str, ...] = ()

    @property
    def gpus_used(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size if self.gpus else 0

    @property
    def engines(self) -> str:
        """The engines in a few words: "vLLM: 8 replicas x TP 1, bfloat16"."""
        if self.backend != "vllm":
            return f"{'transformers' if self.backend == 'hf' else self.backend}, {self.dtype}"
        replicas = f"{self.data_parallel_size} replica{'s' if self.data_parallel_size > 1 else ''}"
        where = "" if self.gpus else " on the CPU"
        return f"vLLM: {replicas} x TP {self.tensor_parallel_size}, {self.dtype}{where}"


def sampling_layout(
    facts: ModelFacts, devices: DeviceFacts, sampling_cfg, *, adapters: bool, backend: str | None = None
) -> SamplingLayout:
    """The sampling layout for `sampling_cfg` (a SamplingConfig); `adapters`: generate calls may pass a
    LoRA adapter. `backend` overrides the config's (the caller resolves `auto`). A
    `sampling.tensor_parallel_size` that cannot work raises PlanError."""
    backend = backend or sampling_cfg.backend
    mode = resolve_adapter_mode(sampling_cfg.adapter_mode, devices)
    requested = sampling_cfg.tensor_parallel_size
    replicas = getattr(sampling_cfg, "data_parallel_size", None)
    notes: list[str] = []
    if devices.gpus == 0:
        # The CPU engine: the checkpoint's dtype, the configured TP (1 unless set), one replica unless
        # sampling.data_parallel_size asks for more (vLLM engines on separate cores).
        dp = (replicas or 1) if backend == "vllm" else 1
        if dp > 1:
            notes.append(f"{dp} vLLM replicas sample in parallel on the CPU")
        return SamplingLayout(
            backend, engine_dtype(facts, devices, adapters=False), requested or 1, dp, 0, mode, tuple(notes)
        )
    dtype = engine_dtype(facts, devices, adapters=adapters)
    if backend != "vllm":
        # transformers samples on one GPU in the checkpoint's dtype; a server samples elsewhere.
        where = "on the server at sampling.server_url" if backend == "server" else "on cuda:0"
        return SamplingLayout(backend, facts.dtype, 1, 1, devices.gpus, mode, (f"{backend} samples {where}",))
    sizes = tensor_parallel_sizes(facts, devices.gpus)
    if requested is not None:
        if requested > devices.gpus:
            raise PlanError(
                f"sampling.tensor_parallel_size={requested} but {devices.gpus} GPU(s) are visible; "
                f"set it to one of {', '.join(map(str, sizes))} or remove it (nega then picks {sizes[-1]})"
            )
        if facts.heads is not None and requested not in sizes:
            raise PlanError(
                f"sampling.tensor_parallel_size={requested} does not divide {facts.name}'s "
                f"{facts.heads} attention heads and {facts.kv_heads} KV heads, which vLLM requires; "
                f"set it to one of {', '.join(map(str, sizes))} or remove it (nega then picks {sizes[-1]})"
            )
        tp = requested
    else:
        tp = sizes[-1]
        if facts.heads is None:
            notes.append("model heads unknown: tensor-parallel size 1, which every model accepts")
    dp = devices.gpus // tp
    if replicas is not None:
        if replicas > dp:
            raise PlanError(
                f"sampling.data_parallel_size={replicas} needs {replicas * tp} GPUs at tensor-parallel "
                f"size {tp}, but {devices.gpus} are visible; set it to at most {dp} or remove it "
                f"(nega then starts {dp})"
            )
        dp = replicas
    if tp * dp < devices.gpus:
        notes.append(
            f"{devices.gpus - tp * dp} of {devices.gpus} GPUs idle while sampling: "
            f"{tp} x {dp} replicas use {tp * dp}"
        )
    if dp > 1:
        notes.append(
            f"{dp} vLLM replicas of tensor-parallel size {tp} sample in parallel, each on its own "
            f"{'GPU' if tp == 1 else f'{tp} GPUs'}; a call's prompts are split between them"
        )
    return SamplingLayout("vllm", dtype, tp, dp, devices.gpus, mode, tuple(notes))


# ---------------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB per GPU, by part; `budget_gib` None on a CPU (nothing to check against)."""

    parts: dict[str, float]
    budget_gib: float | None

    @property
    def total_gib(self) -> float:
        return round(sum(self.parts.values()), 2)

    @property
    def fits(self) -> bool | None:
        return None if self.budget_gib is None or not self.parts else self.total_gib <= self.budget_gib

    def to_dict(self) -> dict:
        return {
            "parts_gib": self.parts,
            "total_gib": self.total_gib,
            "budget_gib": self.budget_gib,
            "fits": self.fits,
        }


@dataclass(frozen=True)
class TrainShape:
    """The recipe's knobs that set training memory, flat, so a fix is one `dataclasses.replace`."""

    processes: int
    batch_size: int
    grad_accum: int
    sequences_per_example: int
    max_length: int
    gradient_checkpointing: bool
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    lora: bool
    lora_r: int
    lora_targets: Any
    weight_bytes: float
    activation_bytes: float


# Sequences one training example holds, by method (D²O: the annotated negative and K self-samples).
SEQUENCES_PER_EXAMPLE = {
    "d2o": lambda r: 1 + (r.d2o.k or r.sampling.n),
    "stepneg": lambda r: 2,  # chosen and rejected continuation of a pair
    "qcrd": lambda r: 2,  # the rationale to learn and the negative one
    "sft": lambda r: 1,
    "rm": lambda r: 2,  # the chosen and the rejected answer, scored in one pass
}


def _round(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v / GIB, 2) for k, v in values.items()}


def training_memory(facts: ModelFacts, shape: TrainShape, devices: DeviceFacts) -> MemoryEstimate:
    """Training GiB per GPU (the module docstring gives each part's formula)."""
    if not facts.known:
        return MemoryEstimate({}, devices.gib_per_gpu or None)
    world = max(1, shape.processes)
    p = facts.params
    lora = facts.lora_params(shape.lora_r, shape.lora_targets) if shape.lora else 0
    trainable = lora if shape.lora else p
    shard_weights = world if shape.zero_stage == 3 else 1
    shard_states = world if shape.zero_stage >= 2 else 1
    weights = 0.0 if shape.offload_params else p * shape.weight_bytes / shard_weights
    grad_bytes = 4.0 if shape.lora else shape.weight_bytes
    master = 4.0 if (not shape.lora and shape.zero_stage > 0 and shape.weight_bytes < 4) else 0.0
    optimizer = 0.0 if shape.offload_optimizer else trainable * (8.0 + master) / shard_states
    tokens = shape.batch_size * shape.sequences_per_example * shape.max_length
    kv_width = facts.kv_heads * facts.head_dim
    per_layer = 6 * facts.hidden + 2 * kv_width + 4 * (facts.intermediate or 4 * facts.hidden)
    if shape.gradient_checkpointing:
        kept = tokens * (facts.layers * facts.hidden + per_layer)
    else:
        kept = tokens * facts.layers * per_layer
    parts = {
        "weights": weights,
        "lora": lora * 4.0 / shard_weights,
        "gradients": trainable * grad_bytes / shard_states,
        "optimizer": optimizer,
        "activations": kept * shape.activation_bytes,
        "logits": tokens * facts.vocab * shape.activation_bytes * 2,
        "runtime": TRAIN_RUNTIME_GIB * GIB,
    }
    return MemoryEstimate(_round(parts), devices.gib_per_gpu or None)


def kv_bytes_per_token(facts: ModelFacts, dtype: str, tp: int) -> float:
    return 2 * facts.layers * facts.kv_heads * facts.head_dim * DTYPE_BYTES.get(dtype, 2.0) / tp


def sampling_memory(
    facts: ModelFacts, layout: SamplingLayout, devices: DeviceFacts, *, lora_r: int, utilization: float
) -> MemoryEstimate:
    """vLLM's GiB per GPU to start (the module docstring gives each part's formula)."""
    budget = round(devices.gib_per_gpu * utilization, 2) if devices.gpus else None
    if not facts.known:
        return MemoryEstimate({}, budget)
    tp = layout.tensor_parallel_size
    ebytes = DTYPE_BYTES.get(layout.dtype, 2.0)
    lora = facts.lora_params(lora_r) * MAX_LORAS * ebytes / tp if layout.adapter_mode == "lora" else 0.0
    context = facts.max_positions or 4096
    parts = {
        "weights": facts.params * ebytes / tp,
        "lora": lora,
        "kv_cache": kv_bytes_per_token(facts, layout.dtype, tp) * context,
        "runtime": SAMPLING_RUNTIME_GIB * GIB,
    }
    return MemoryEstimate(_round(parts), budget)


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Fix:
    """Recipe overrides that, by the estimate, make a stage fit (`together`: only all of them at once)."""

    stage: str  # training or sampling
    changes: dict[str, Any]
    total_gib: float
    together: bool = False

    @property
    def overrides(self) -> str:
        return " ".join(
            f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.changes.items()
        )


@dataclass(frozen=True)
class TrainingPlan:
    processes: int
    launcher: str  # in-process or accelerate
    data_parallel: str  # how the processes share the work
    zero_stage: int
    gradient_checkpointing: bool
    dtype: str
    memory: MemoryEstimate


@dataclass(frozen=True)
class Plan:
    recipe: str
    method: str
    devices: DeviceFacts
    model: ModelFacts
    sampling: SamplingLayout
    sampling_memory: MemoryEstimate
    training: TrainingPlan
    reference_device: str
    merge_device: str
    classifier_device: str
    kv_room_sequences: int | None
    fixes: tuple[Fix, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool | None:
        verdicts = [self.training.memory.fits, self.sampling_memory.fits]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    def to_dict(self) -> dict:
        """The plan as JSON-able data (what `nega plan --json` prints)."""
        sampling = dataclasses.asdict(self.sampling)
        sampling.update(gpus_used=self.sampling.gpus_used, engines=self.sampling.engines)
        sampling.update(memory=self.sampling_memory.to_dict())
        sampling.update(kv_room_sequences=self.kv_room_sequences, notes=list(self.sampling.notes))
        training = dataclasses.asdict(self.training)
        training["memory"] = self.training.memory.to_dict()
        model = dataclasses.asdict(self.model)
        model["known"] = self.model.known
        return {
            "recipe": self.recipe,
            "method": self.method,
            "devices": dataclasses.asdict(self.devices),
            "model": model,
            "sampling": sampling,
            "training": training,
            "reference_device": self.reference_device,
            "merge_device": self.merge_device,
            "classifier_device": self.classifier_device,
            "fits": self.fits,
            "fixes": [
                {
                    "stage": f.stage,
                    "changes": f.changes,
                    "total_gib": f.total_gib,
                    "together": f.together,
                    "overrides": f.overrides,
                }  # fmt: skip
                for f in self.fixes
            ],
            "notes": list(self.notes),
        }


def training_dtype(recipe, facts: ModelFacts, devices: DeviceFacts) -> str:
    """The dtype the policy is loaded in (nega.models.torch_dtype): `model.dtype`, where `auto` keeps the
    checkpoint's on a GPU and is float32 on a CPU."""
    if recipe.model.dtype != "auto":
        return recipe.model.dtype
    if devices.gpus == 0:
        return "float32"
    return facts.dtype if facts.dtype != "auto" else "bfloat16"


def _quantization_bytes(recipe) -> float | None:
    """Bytes per weight of a quantized load (`model.quantization`, where the schema has it)."""
    value = str(getattr(recipe.model, "quantization", None) or "").lower()
    if not value or value in ("none", "false", "no"):
        return None
    return 0.55 if "4" in value else 1.0 if "8" in value else None


def train_shape(recipe, facts: ModelFacts, devices: DeviceFacts, processes: int) -> TrainShape:
    dtype = training_dtype(recipe, facts, devices)
    weight_bytes = _quantization_bytes(recipe) or DTYPE_BYTES[dtype]
    per_example = SEQUENCES_PER_EXAMPLE.get(recipe.method, lambda r: 1)(recipe)
    train = recipe.train
    return TrainShape(
        processes=processes,
        batch_size=train.batch_size,
        grad_accum=train.grad_accum,
        sequences_per_example=per_example,
        max_length=recipe.model.max_length,
        gradient_checkpointing=train.gradient_checkpointing,
        zero_stage=train.deepspeed.stage,
        offload_optimizer=train.deepspeed.offload_optimizer,
        offload_params=train.deepspeed.offload_params,
        lora=recipe.lora.enabled,
        lora_r=recipe.lora.r,
        lora_targets=recipe.lora.target_modules,
        weight_bytes=weight_bytes,
        activation_bytes=2.0 if (train.bf16 and devices.gpus) or weight_bytes < 4 else 4.0,
    )


def _training_fixes(facts: ModelFacts, shape: TrainShape, devices: DeviceFacts, recipe) -> list[Fix]:
    """Overrides that make training fit: each one that does alone, else the first few together."""
    candidates: list[tuple[dict, dict]] = []  # (recipe overrides, TrainShape changes)
    if not shape.gradient_checkpointing:
        candidates.append(({"train.gradient_checkpointing": True}, {"gradient_checkpointing": True}))
    for batch in range(shape.batch_size - 1, 0, -1):
        if training_memory(facts, dataclasses.replace(shape, batch_size=batch), devices).fits:
            accum = math.ceil(shape.grad_accum * shape.batch_size / batch)
            candidates.append(
                (
                    {"train.batch_size": batch, "train.grad_accum": accum},
                    {"batch_size": batch, "grad_accum": accum},
                )
            )
            break
    if shape.processes > 1:
        for stage in (2, 3):
            if shape.zero_stage < stage:
                candidates.append(({"train.deepspeed.stage": stage}, {"zero_stage": stage}))
    if not shape.offload_optimizer:
        stage = max(shape.zero_stage, 2)
        candidates.append(
            (
                {"train.deepspeed.stage": stage, "train.deepspeed.offload_optimizer": True},
                {"zero_stage": stage, "offload_optimizer": True},
            )  # fmt: skip
        )
    if not shape.offload_params:
        # ZeRO-3 keeps the weights in CPU memory and streams them to the GPU layer by layer.
        candidates.append(
            (
                {
                    "train.deepspeed.stage": 3,
                    "train.deepspeed.offload_params": True,
                    "train.deepspeed.offload_optimizer": True,
                },
                {"zero_stage": 3, "offload_params": True, "offload_optimizer": True},
            )  # fmt: skip
        )
    if not shape.lora:
        candidates.append(({"lora.enabled": True}, {"lora": True}))
    quantization = type(recipe.model).model_fields.get("quantization")
    if quantization is not None and _quantization_bytes(recipe) is None:
        choices = [c for c in _literal_choices(quantization.annotation) if "4" in str(c)]
        if choices:
            candidates.append(({"model.quantization": choices[0]}, {"weight_bytes": 0.55}))
    singles = []
    for overrides, changes in candidates:
        estimate = training_memory(facts, dataclasses.replace(shape, **changes), devices)
        if estimate.fits:
            singles.append(Fix("training", overrides, estimate.total_gib))
    if singles:
        return singles
    # No single change is enough: take every change that lowers the estimate, then the largest batch
    # that fits on top of them.
    combined, changes_all = {}, {}
    best = training_memory(facts, shape, devices).total_gib
    for overrides, changes in candidates:
        trial = training_memory(facts, dataclasses.replace(shape, **{**changes_all, **changes}), devices)
        if trial.total_gib < best - 0.25:  # a change that saves little only adds noise to the advice
            combined.update(overrides)
            changes_all.update(changes)
            best = trial.total_gib
            if trial.fits:
                return [Fix("training", combined, trial.total_gib, together=True)]
    reduced = dataclasses.replace(shape, **changes_all)
    for batch in range(shape.batch_size - 1, 0, -1):
        trial = training_memory(facts, dataclasses.replace(reduced, batch_size=batch), devices)
        if trial.fits:
            accum = math.ceil(shape.grad_accum * shape.batch_size / batch)
            combined.update({"train.batch_size": batch, "train.grad_accum": accum})
            return [Fix("training", combined, trial.total_gib, together=True)]
    return []


def _literal_choices(annotation) -> list:
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [c for arg in get_args(annotation) for c in _literal_choices(arg)]


def make_plan(
    recipe, devices: DeviceFacts, *, processes: int | None = None, facts: ModelFacts | None = None,
    backend: str | None = None,
) -> Plan:  # fmt: skip
    """The plan of `recipe` on `devices`: pure, given the model facts (read from the recipe's model when
    not given) and the sampling backend (`auto` resolves to vllm when it is installed).

    `processes` is the training processes (`nega run --gpus`); default one per GPU. More processes
    than GPUs raises PlanError."""
    facts = facts or recipe_model_facts(recipe)
    if processes is None:
        processes = max(1, devices.gpus)
    if devices.gpus and processes > devices.gpus:
        raise PlanError(
            f"--gpus {processes} asks for more training processes than the {devices.gpus} GPU(s) visible; "
            f"use --gpus {devices.gpus} or fewer"
        )
    if backend is None:
        backend = recipe.sampling.backend
    if backend == "auto":
        import importlib.util

        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    adapters = recipe.lora.enabled
    layout = sampling_layout(facts, devices, recipe.sampling, adapters=adapters, backend=backend)
    notes = [facts.note] if facts.note else []
    sampling_mem = sampling_memory(
        facts, layout, devices, lora_r=recipe.lora.r, utilization=recipe.sampling.gpu_memory_utilization
    )
    if backend == "server":
        sampling_mem = MemoryEstimate({}, None)
    kv_room = None
    if facts.known and sampling_mem.budget_gib is not None:
        free = (sampling_mem.budget_gib - sampling_mem.total_gib + sampling_mem.parts["kv_cache"]) * GIB
        per_seq = kv_bytes_per_token(facts, layout.dtype, layout.tensor_parallel_size) * (
            recipe.model.max_length + recipe.sampling.max_tokens
        )
        kv_room = max(0, int(free // per_seq))
        if kv_room < recipe.sampling.n:
            notes.append(
                f"the KV cache holds {kv_room} sequences, fewer than sampling.n={recipe.sampling.n}: "
                "lower sampling.max_tokens or model.max_length, or raise sampling.tensor_parallel_size"
            )
    shape = train_shape(recipe, facts, devices, processes)
    train_mem = training_memory(facts, shape, devices)
    launcher = "in-process" if processes == 1 and shape.zero_stage == 0 else "accelerate"
    if processes == 1:
        shared = "one process on one device (never nn.DataParallel)"
    elif shape.zero_stage == 0:
        shared = f"DDP over {processes} processes (each holds the whole model)"
    else:
        shared = f"DeepSpeed ZeRO-{shape.zero_stage} over {processes} processes"
    training = TrainingPlan(
        processes, launcher, shared, shape.zero_stage, shape.gradient_checkpointing,
        training_dtype(recipe, facts, devices), train_mem,
    )  # fmt: skip
    fixes: list[Fix] = []
    if train_mem.fits is False:
        fixes += _training_fixes(facts, shape, devices, recipe)
    if sampling_mem.fits is False:
        fixes += _sampling_fixes(facts, layout, devices, recipe)
    if devices.gpus and devices.gpus > processes:
        notes.append(f"training uses {processes} of {devices.gpus} GPUs: run with --gpus {devices.gpus}")
    if train_mem.fits is False and not any(f.stage == "training" for f in fixes):
        notes.append("no change of train.*, lora.* or deepspeed keys makes training fit: more GPUs "
                     "(ZeRO-3 shards the weights over them) or a smaller model")  # fmt: skip
    if not facts.known:
        notes.append("memory not estimated: the model's architecture is unknown")
    device = work_device(devices)
    return Plan(
        recipe=recipe.name,
        method=recipe.method,
        devices=devices,
        model=facts,
        sampling=layout,
        sampling_memory=sampling_mem,
        training=training,
        reference_device=device,
        merge_device=device,
        classifier_device=device,
        kv_room_sequences=kv_room,
        fixes=tuple(fixes),
        notes=tuple(notes),
    )


def _sampling_fixes(facts: ModelFacts, layout: SamplingLayout, devices: DeviceFacts, recipe) -> list[Fix]:
    fixes = []
    sizes = tensor_parallel_sizes(facts, devices.gpus)
    if layout.tensor_parallel_size < sizes[-1]:
        wider = dataclasses.replace(
            layout, tensor_parallel_size=sizes[-1], data_parallel_size=devices.gpus // sizes[-1]
        )
        estimate = sampling_memory(
            facts, wider, devices, lora_r=recipe.lora.r, utilization=recipe.sampling.gpu_memory_utilization
        )
        if estimate.fits:
            fixes.append(Fix("sampling", {"sampling.tensor_parallel_size": sizes[-1]}, estimate.total_gib))
    if recipe.sampling.gpu_memory_utilization < 0.95:
        estimate = sampling_memory(facts, layout, devices, lora_r=recipe.lora.r, utilization=0.95)
        if estimate.fits:
            fixes.append(Fix("sampling", {"sampling.gpu_memory_utilization": 0.95}, estimate.total_gib))
    return fixes
