"""A prepared check of nega's GPU paths on one GPU, offline, in a few minutes: the toy model (built by
nega.toy), nega's own sampling, scoring, training and memory code, and the plan for the visible device.

    python benchmarks/gpu_check.py                      # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --size tiny --toy-steps 20   # the same steps on a CPU

Steps, each recorded with its numbers and `ok`:

- plan: `nega.plan.make_plan` for toy-d2o on the detected device: reference log-probs, merges and
  classifiers on `cuda:0`, training dtype and gradient checkpointing as the recipe resolves them;
- sampling: `nega.sampling.hf.HFSampler` generates on the device (tokens per second);
- reference: `nega.logps.reference_logps` on the device matches the same scores computed on the CPU;
- training: a LoRA step under `MethodTrainer` in bf16 (on CUDA) with gradient checkpointing, run through
  `nega.launch.Launcher` in this process as `nega run` trains; the adapter it saves is non-empty and
  its lora_B weights moved from zero;
- memory: after the launcher returns, `torch.cuda.memory_allocated()` is back at its baseline (within a
  quarter of the model's weights), and the check an engine runs before it starts
  (`nega.models.check_engine_memory`) passes.

The JSON (`--out`, default benchmarks/results/gpu_check.json) holds every step's result, the machine
and provenance (commit, source hash, command, date, device). Without a CUDA device and without
`--device cpu` it writes `skipped: no CUDA device` and exits 0. Exit 1 when a step fails.

Needs torch, transformers, peft, accelerate and pydantic (nega's recipe schema); not vLLM, DeepSpeed or
datasets. Where pydantic is missing (the GPU machines' image), carry its wheels and install them first:

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \\
        -d .whl pydantic pydantic-core annotated-types typing-inspection
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PROMPTS = ["what is 2 plus 3?", "how do I make a cake?", "say hello.", "what is 7 plus 1?"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    # 125m: large enough that a model left in memory stands out from cuBLAS workspaces (tens of MiB).
    parser.add_argument("--size", default="125m", help="toy model size (nega.toy.model.SIZES)")
    parser.add_argument("--toy-steps", type=int, default=30, help="training steps of the toy model (CPU)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    import tempfile

    import torch
    from harness import invocation, machine, summarize, write_result

    record = {
        "check": "gpu_check",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": summarize([invocation(__file__)]),
        "device": args.device,
        "skipped": None,
    }
    if args.device == "cuda" and not torch.cuda.is_available():
        record["skipped"] = "no CUDA device"
        record["machine"] = machine("cpu", packages=("torch",))
        write_result(args.out, record)
        print(f"[gpu_check] skipped: no CUDA device ({args.out})")
        return 0
    record["machine"] = machine(args.device, packages=("torch", "transformers", "peft", "accelerate"))
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        record["steps"] = run_steps(args, Path(work))
    record["ok"] = all(step.get("ok") for step in record["steps"].values())
    write_result(args.out, record)
    for name, step in record["steps"].items():
        print(f"[gpu_check] {name}: {'ok' if step.get('ok') else 'FAILED'} {step.get('error', '')}")
    print(f"[gpu_check] {'all ok' if record['ok'] else 'FAILED'}: {args.out}")
    return 0 if record["ok"] else 1


def run_steps(args, work: Path) -> dict:
    """Every step in order; a step that raises is recorded as failed and the next ones still run."""
    from nega.config import load_recipe
    from nega.toy.build import build_toy_model

    recipe = load_recipe("toy-d2o", [f"toy.size={args.size}", f"toy.steps={args.toy_steps}"])
    steps: dict[str, dict] = {}
    model_dir = work / "model"

    def step(name, function, *a):
        started = time.perf_counter()
        try:
            steps[name] = function(*a)
        except Exception as exc:  # recorded, so one broken path does not hide the others
            steps[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        steps[name]["seconds"] = round(time.perf_counter() - started, 2)

    step("plan", plan_step, recipe, args.device)
    step("toy_model", lambda: {"ok": build_toy_model(recipe.toy, model_dir, recipe.seed).is_dir()})
    step("sampling", sampling_step, recipe, model_dir, args.device)
    step("reference", reference_step, recipe, model_dir, args.device)
    step("training", training_step, recipe, model_dir, work / "train", args.device)
    return steps


def plan_step(recipe, device: str) -> dict:
    from nega.plan import DeviceFacts, make_plan

    devices = DeviceFacts.detect() if device == "cuda" else DeviceFacts()
    plan = make_plan(recipe, devices, backend="hf")
    expected = "cuda:0" if device == "cuda" else "cpu"
    return {
        "ok": plan.reference_device == expected and plan.merge_device == expected,
        "devices": {"gpus": devices.gpus, "gib_per_gpu": devices.gib_per_gpu, "name": devices.name},
        "reference_device": plan.reference_device,
        "training_dtype": plan.training.dtype,
        "gradient_checkpointing": plan.training.gradient_checkpointing,
        "training_memory_gib": plan.training.memory.total_gib,
        "sampling_dtype": plan.sampling.dtype,
    }


def sampling_step(recipe, model_dir: Path, device: str) -> dict:
    import torch

    from nega.sampling.hf import HFSampler

    sampler = HFSampler(model_dir, recipe.sampling)
    try:
        on = sampler.base.device.type
        prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
        started = time.perf_counter()
        groups = sampler.generate(prompts, n=2, temperature=1.0, max_tokens=24, seed=0)
        if on == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    finally:
        sampler.close()
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    texts = [c.text for g in groups for c in g]
    return {
        "ok": on == device and tokens > 0 and len(texts) == 2 * len(PROMPTS),
        "on": on,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "example": texts[0][:80],
    }


def reference_step(recipe, model_dir: Path, device: str) -> dict:
    import math

    from nega.logps import reference_logps
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt

    tokenizer = load_tokenizer(model_dir)
    pairs = [
        (render_prompt(tokenizer, [{"role": "user", "content": p}]), "I can help with that.") for p in PROMPTS
    ]
    eos = [True] * len(pairs)
    here = reference_logps(
        str(model_dir), recipe.model, pairs, eos, device=f"{device}:0" if device == "cuda" else "cpu"
    )
    cpu = reference_logps(str(model_dir), recipe.model, pairs, eos, device="cpu")
    gap = max(abs(a - b) for a, b in zip(here, cpu, strict=True))
    return {
        "ok": all(math.isfinite(v) for v in here) and gap < 0.05,
        "logps": [round(v, 4) for v in here],
        "max_abs_diff_vs_cpu": gap,
    }


def training_step(recipe, model_dir: Path, out: Path, device: str) -> dict:
    """One in-process training stage through the launcher, then the memory it leaves behind."""
    import torch

    from nega.launch import Launcher
    from nega.models import check_engine_memory

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated()
    kwargs = {"model_dir": str(model_dir), "out_dir": str(out), "bf16": cuda, "seed": recipe.seed}
    Launcher().run("gpu_check:train_lora_steps", kwargs, out)
    result = json.loads((out / "train_result.json").read_text())
    if cuda:
        after = torch.cuda.memory_allocated()
        result["memory_baseline_bytes"], result["memory_after_bytes"] = baseline, after
        # A model kept alive would leave at least its weights behind; workspaces are far smaller.
        result["memory_handed_back"] = after - baseline < result["model_bytes"] / 4
        try:
            check_engine_memory(0.85, 1)
            result["engine_memory_check"] = "passed"
        except Exception as exc:  # the message says what holds the memory
            result["engine_memory_check"] = str(exc)
    else:
        result["memory_handed_back"] = True  # nothing to hand back on a CPU
    result["ok"] = bool(result["trained_ok"] and result["memory_handed_back"])
    return result


def train_lora_steps(model_dir: str, out_dir: str, bf16: bool, seed: int, steps: int = 3) -> None:
    """A LoRA adapter trained `steps` steps (response-masked cross-entropy) with gradient checkpointing,
    in bf16 when asked, saved as `nega run` saves it; writes `train_result.json` beside it."""
    import torch
    from safetensors.torch import load_file

    from nega.config import LoraConfig, ModelConfig, TrainConfig
    from nega.logps import collate_sequences, encode_pair
    from nega.models import load_policy
    from nega.sampling.base import render_prompt
    from nega.trainer import MethodTrainer
    from nega.training import save_trained, training_arguments

    out = Path(out_dir)
    model, tok = load_policy(
        model_dir, ModelConfig(name=model_dir), LoraConfig(r=8, alpha=16, dropout=0.0), seed=seed
    )
    pairs = [(render_prompt(tok, [{"role": "user", "content": p}]), "sure, here it is.") for p in PROMPTS * 4]
    encoded = [encode_pair(tok, p, r) for p, r in pairs]

    class CE(MethodTrainer):
        def loss_and_metrics(self, model, inputs):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[
                :, :-1
            ]
            mask = inputs["response_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), inputs["input_ids"][:, 1:], reduction="none"
            )
            self.logits_dtype = str(logits.dtype)
            return ((nll * mask).sum(-1) / mask.sum(-1)).mean(), {}

    def collate(rows):
        ids, attn, resp = collate_sequences(rows, tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}

    cfg = TrainConfig(lr=1e-3, batch_size=4, max_steps=steps, logging_steps=1, save_steps=1000,
                      warmup_ratio=0.0, lr_scheduler="constant", bf16=bf16, gradient_checkpointing=True)  # fmt: skip
    trainer = CE(model=model, args=training_arguments(cfg, out / "checkpoints", seed=seed),
                 train_dataset=encoded, data_collator=collate)  # fmt: skip
    trainer.train()
    folder = save_trained(trainer, tok, out / "adapter")
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    weights = load_file(folder / "adapter_model.safetensors")
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    moved = [float(t.abs().sum()) for n, t in weights.items() if "lora_B" in n]
    result = {
        "model_bytes": sum(p.numel() * p.element_size() for p in trainer.model.parameters()),
        "losses": losses,
        "steps": trainer.state.global_step,
        "bf16": trainer.args.bf16,
        "logits_dtype": trainer.logits_dtype,
        "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "on": str(next(trainer.model.parameters()).device),
        "adapter_tensors": len(weights),
        "adapter_bytes": (folder / "adapter_model.safetensors").stat().st_size,
        "peak_memory_bytes": peak if torch.cuda.is_available() else None,
    }
    result["trained_ok"] = (
        result["steps"] == steps
        and all(torch.isfinite(torch.tensor(losses)))
        and result["gradient_checkpointing"]
        and result["adapter_tensors"] > 0
        and all(t.numel() > 0 for t in weights.values())
        and bool(moved)
        and all(m > 0 for m in moved)
        and (result["logits_dtype"] == "torch.bfloat16") == bf16
    )
    (out / "train_result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
