"""ServerSampler against a loopback OpenAI-compatible server written here (127.0.0.1 only).

The fake server answers /v1/completions deterministically from (prompt ids, seed, sample index) and
records every request, so the tests check what nega sends as well as what it returns.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sampling_helpers import chat

from nega.config import SamplingConfig
from nega.sampling.base import render_prompt, request_seed
from nega.sampling.server import ServerError, ServerSampler

SERVED = "served-base"


class FakeServer:
    """/v1/models, /v1/completions, /v1/load_lora_adapter and /v1/unload_lora_adapter, in a thread."""

    def __init__(self, *, failures: int = 0, delay: float = 0.0, runtime_lora: bool = True, lora_modules=()):
        self.requests: list[tuple[str, dict]] = []
        self.failures = failures  # answer this many requests with 503 first
        self.delay = delay
        self.runtime_lora = runtime_lora
        self.adapters = set(lora_modules)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body):
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/json" if not isinstance(body, str) else "text/plain"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path != "/v1/models":
                    return self.reply(404, {"error": {"message": f"no route {self.path}"}})
                models = [{"id": SERVED, "parent": None}]
                models += [{"id": a, "parent": SERVED} for a in sorted(server.adapters)]
                self.reply(200, {"object": "list", "data": models})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, body))
                    fail = server.failures > 0
                    server.failures -= fail
                if fail:
                    return self.reply(503, {"error": {"message": "warming up"}})
                time.sleep(server.delay)
                if self.path == "/v1/completions":
                    return self.completions(body)
                if self.path.endswith("_lora_adapter") and not server.runtime_lora:
                    return self.reply(404, {"detail": "Not Found"})
                if self.path == "/v1/load_lora_adapter":
                    if body["lora_name"] in server.adapters:
                        return self.reply(
                            400, {"error": {"message": "The lora adapter has already been loaded."}}
                        )
                    server.adapters.add(body["lora_name"])
                    return self.reply(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
                if self.path == "/v1/unload_lora_adapter":
                    server.adapters.discard(body["lora_name"])
                    return self.reply(200, "Success")
                self.reply(404, {"detail": "Not Found"})

            def completions(self, body):
                if body["model"] not in {SERVED, *server.adapters}:
                    return self.reply(
                        404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
                    )
                if not all(isinstance(t, int) for t in body["prompt"]):
                    return self.reply(400, {"error": {"message": "prompt must be token ids here"}})
                choices = []
                for k in range(body["n"]):
                    words = [f"k{k}"] + [
                        f"w{(sum(body['prompt']) * 31 + body['seed'] * 7 + k + j) % 97}" for j in range(5)
                    ]
                    ids = list(range(len(words)))
                    text = " ".join(words[: body["max_tokens"]])
                    reason = "length" if body["max_tokens"] < len(words) else "stop"
                    choices.append({"index": k, "text": text, "finish_reason": reason, "token_ids": ids})
                self.reply(200, {"id": "cmpl-1", "object": "text_completion", "choices": choices[::-1]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def posts(self, path: str) -> list[dict]:
        return [body for p, body in self.requests if p == f"/v1/{path}"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


def make_sampler(model_dir, url, **cfg):
    return ServerSampler(model_dir, SamplingConfig(backend="server", server_url=url, **cfg))


def test_sends_our_token_ids_and_sampling_params(tiny_model_dir, server):
    sampler = make_sampler(tiny_model_dir, server.url)
    prompts = [chat("what is 2 plus 3?"), "<|user|>\nsay hello.\n<|assistant|>\n"]
    out = sampler.generate(prompts, n=3, temperature=0.7, top_p=0.9, max_tokens=20, seed=4, stop=["\n"])
    sent = sorted(server.posts("completions"), key=lambda b: len(b["prompt"]))
    tok = sampler.tokenizer
    expected = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert sorted(expected, key=len) == [b["prompt"] for b in sent]
    for body in sent:
        i = expected.index(body["prompt"])
        assert body["seed"] == request_seed(4, i)
        assert (body["model"], body["n"], body["temperature"], body["top_p"]) == (SERVED, 3, 0.7, 0.9)
        assert (body["max_tokens"], body["stop"]) == (20, ["\n"])
    assert [len(g) for g in out] == [3, 3]
    # Choices come back in index order even when the server lists them otherwise.
    assert [c.text.split()[0] for c in out[0]] == ["k0", "k1", "k2"]
    assert out[0][0].token_ids == [0, 1, 2, 3, 4, 5]


def test_same_seed_same_results_and_finish_reasons(tiny_model_dir, server):
    sampler = make_sampler(tiny_model_dir, server.url)
    prompts = [chat("name a color."), chat("count to five.")]
    a = sampler.generate(prompts, n=2, seed=1, max_tokens=10)
    assert a == sampler.generate(prompts, n=2, seed=1, max_tokens=10)
    assert a != sampler.generate(prompts, n=2, seed=2, max_tokens=10)
    short = sampler.generate(prompts, n=1, max_tokens=2)
    assert [g[0].finish_reason for g in short] == ["length", "length"]
    assert [g[0].finish_reason for g in a] == ["stop", "stop"]


def test_transient_errors_are_retried(tiny_model_dir):
    fake = FakeServer(failures=2)
    try:
        sampler = make_sampler(tiny_model_dir, fake.url, server_retries=3)
        out = sampler.generate([chat("say hello.")], n=1, max_tokens=5)
        assert out[0][0].text
        assert len(fake.posts("completions")) == 3  # two 503s, then the answer
    finally:
        fake.close()


def test_unreachable_server_names_the_url(tiny_model_dir):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    sampler = make_sampler(tiny_model_dir, url, server_retries=1, server_timeout=2)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}/v1/.*failed 2 time"):
        sampler.generate([chat("say hello.")])


def test_slow_server_times_out(tiny_model_dir):
    fake = FakeServer(delay=1.5)
    try:
        sampler = make_sampler(tiny_model_dir, fake.url, server_retries=1, server_timeout=0.3)
        with pytest.raises(ConnectionError, match="no answer within 0.3 s"):
            sampler.generate([chat("say hello.")])
        assert len(fake.posts("completions")) == 2
    finally:
        fake.close()


def test_client_errors_are_not_retried(tiny_model_dir, server):
    sampler = make_sampler(tiny_model_dir, server.url, server_retries=3)
    sampler._model_name = "not-served"
    with pytest.raises(ServerError, match="HTTP 404.*not-served"):
        sampler.generate([chat("say hello.")])
    assert len(server.posts("completions")) == 1


def test_adapter_is_loaded_once_and_reloaded_when_its_weights_change(
    tiny_model_dir, server, lora_adapter_dir, tmp_path
):
    import os
    import shutil

    lora_adapter_dir = shutil.copytree(lora_adapter_dir, tmp_path / "adapter-a")
    sampler = make_sampler(tiny_model_dir, server.url)
    sampler.generate([chat("say hello.")], adapter=lora_adapter_dir)
    sampler.generate([chat("name a color.")], adapter=lora_adapter_dir)
    loads = server.posts("load_lora_adapter")
    assert loads == [{"lora_name": lora_adapter_dir.name, "lora_path": str(lora_adapter_dir.resolve())}]
    assert {b["model"] for b in server.posts("completions")} == {lora_adapter_dir.name}

    weights = lora_adapter_dir / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    sampler.generate([chat("say hello.")], adapter=lora_adapter_dir)
    assert server.posts("unload_lora_adapter") == [{"lora_name": lora_adapter_dir.name}]
    assert len(server.posts("load_lora_adapter")) == 2
    sampler.generate([chat("say hello.")])
    assert server.posts("completions")[-1]["model"] == SERVED


def test_adapter_served_from_start_without_runtime_loading(tiny_model_dir, lora_adapter_dir):
    fake = FakeServer(runtime_lora=False, lora_modules=[lora_adapter_dir.name])
    try:
        out = make_sampler(tiny_model_dir, fake.url).generate([chat("say hello.")], adapter=lora_adapter_dir)
        assert out[0][0].text
        assert fake.posts("completions")[0]["model"] == lora_adapter_dir.name
    finally:
        fake.close()


def test_adapter_the_server_cannot_load_is_a_clear_error(tiny_model_dir, lora_adapter_dir):
    fake = FakeServer(runtime_lora=False)
    try:
        sampler = make_sampler(tiny_model_dir, fake.url)
        with pytest.raises(ServerError, match="--lora-modules adapter-a=.*VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            sampler.generate([chat("say hello.")], adapter=lora_adapter_dir)
        assert fake.posts("completions") == []
    finally:
        fake.close()
