"""Sampling through an OpenAI-compatible completions server (`sampling.backend: server`).

For a `vllm serve` running elsewhere (other nodes, a shared inference cluster). `sampling.server_url` is
the API root, e.g. `http://host:8000/v1`; requests go to `{server_url}/completions`, one per prompt and
several in flight, so the server batches them.

Prompts are sent as token ids tokenized here with `add_special_tokens=False`, as training tokenizes them,
and each prompt carries the seed derived from (seed, index) that the offline vLLM backend uses too.
Completion token ids come from vLLM's `return_token_ids` extension; a server that does not return them
gets its texts re-tokenized here instead.

Adapters: `adapter=/path/to/my-adapter` asks for the served model named `my-adapter` (the folder name).
When the folder exists here too, nega first asks the server to load it through `/load_lora_adapter`
(vLLM with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; the path must be readable by
the server) and reloads it when its weights file changes. A server without runtime loading must have
been started with the adapter, e.g. `vllm serve BASE --enable-lora --lora-modules my-adapter=/path`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from nega.chat import end_of_turn_id
from nega.progress import progress_bar
from nega.sampling.base import Completion, Prompt, adapter_version, prompt_token_ids, request_seed

MAX_IN_FLIGHT = 32
MAX_BACKOFF_S = 8.0


class ServerError(RuntimeError):
    """The server answered, with an error that retrying will not fix (a 4xx other than 429)."""

    def __init__(self, url: str, status: int, message: str):
        self.url, self.status, self.message = url, status, message
        super().__init__(f"sampling server {url} answered HTTP {status}: {message}")


class ServerSampler:
    """n completions per prompt from an OpenAI-compatible `/completions` endpoint."""

    def __init__(self, model_path: str | Path, cfg):
        from transformers import AutoTokenizer

        if not cfg.server_url:
            raise ValueError("sampling.backend 'server' needs sampling.server_url (e.g. http://host:8000/v1)")
        self.model_path = str(model_path)
        self.cfg = cfg
        self.url = cfg.server_url.rstrip("/")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._model_name: str | None = None
        self.loaded: dict[str, tuple[Path, int]] = {}  # adapters this sampler loaded: name -> version

    def generate(
        self,
        prompts: list[Prompt],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int = 0,
        stop: list[str] | None = None,
        adapter: str | Path | None = None,
        description: str = "sampling",
    ) -> list[list[Completion]]:
        encoded = prompt_token_ids(self.tokenizer, prompts)
        model = self._adapter_model(adapter) if adapter is not None else self.model_name()
        common = {
            "model": model,
            "n": n,
            "temperature": temperature,
            "top_p": top_p if temperature > 0 else 1.0,
            "max_tokens": max_tokens,
            "return_token_ids": True,
        }
        if stop:
            common["stop"] = list(stop)
        end = end_of_turn_id(self.tokenizer)
        if end != self.tokenizer.eos_token_id:
            # vLLM's extension; the server stops on EOS by itself, but not on a chat template's turn end.
            common["stop_token_ids"] = [end]

        results: list[list[Completion]] = [[] for _ in prompts]
        with (
            progress_bar(description, total=len(prompts)) as advance,
            ThreadPoolExecutor(max_workers=max(1, min(MAX_IN_FLIGHT, len(prompts)))) as pool,
        ):
            futures = {
                pool.submit(
                    self._post, "completions", {**common, "prompt": ids, "seed": request_seed(seed, i)}
                ): i
                for i, ids in enumerate(encoded)
            }
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = self._completions(future.result(), n)
                    advance(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return results

    def _completions(self, response: dict, n: int) -> list[Completion]:
        choices = sorted(response.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise ServerError(self.url, 200, f"expected {n} choices per prompt, got {len(choices)}")
        out = []
        for c in choices:
            text = c.get("text", "")
            ids = c.get("token_ids")
            if ids is None:
                # Not vLLM: re-tokenize; may differ from the sampled ids where a tokenizer merges differently.
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            reason = "length" if c.get("finish_reason") == "length" else "stop"
            out.append(Completion(text=text, token_ids=list(ids), finish_reason=reason))
        return out

    def model_name(self) -> str:
        """The served base model: `model_path` when the server lists it, else its only base model."""
        if self._model_name is None:
            try:
                listed = self._get("models").get("data", [])
            except ServerError:
                listed = []  # no /models: trust that the server serves model_path by that name
            ids = [m.get("id") for m in listed]
            bases = [m.get("id") for m in listed if not m.get("parent")]
            if not listed or self.model_path in ids:
                self._model_name = self.model_path
            elif len(bases) == 1:
                self._model_name = bases[0]
            else:
                raise ServerError(
                    self.url,
                    200,
                    f"serves {ids}, none of them {self.model_path!r}; serve the model under that name "
                    "(vllm serve ... --served-model-name NAME) or point model.name at the served one",
                )
        return self._model_name

    def _adapter_model(self, adapter: str | Path) -> str:
        """The served name of a LoRA adapter, loading (or reloading) it on the server when it allows."""
        name = Path(adapter).name
        if not Path(adapter).expanduser().is_dir():
            return name  # only the server has it; it must have been started with it
        version = adapter_version(adapter)
        if self.loaded.get(name) == version:
            return name
        if name in self.loaded:
            # The folder got new weights since this sampler loaded it: the server's copy is stale.
            self._post("unload_lora_adapter", {"lora_name": name}, ok_statuses=(400, 404))
        try:
            self._post("load_lora_adapter", {"lora_name": name, "lora_path": str(version[0])})
        except ServerError as exc:
            # Fine when it is already there (loaded by another client, or served with --lora-modules);
            # nega cannot tell which weights that copy has.
            if "already" not in exc.message.lower() and name not in self._served_names():
                raise ServerError(
                    self.url,
                    exc.status,
                    f"it does not serve adapter {name!r} and could not load it ({exc.message}); start it with "
                    f"--enable-lora --lora-modules {name}={version[0]}, or with "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True so nega can load adapters",
                ) from exc
        self.loaded[name] = version
        return name

    def _served_names(self) -> set[str]:
        try:
            return {m.get("id") for m in self._get("models").get("data", [])}
        except ServerError:
            return set()

    def _get(self, path: str) -> dict:
        return self._send(urllib.request.Request(f"{self.url}/{path}", method="GET"))

    def _post(self, path: str, body: dict, *, ok_statuses: tuple[int, ...] = ()) -> dict:
        request = urllib.request.Request(
            f"{self.url}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            return self._send(request)
        except ServerError as exc:
            if exc.status in ok_statuses:
                return {}
            raise

    def _send(self, request: urllib.request.Request) -> dict:
        """One request with bounded retries: connection errors, timeouts, 429 and 5xx are retried with
        exponential backoff; other HTTP errors are raised at once with the server's message.

        A body that is not JSON (vLLM answers adapter loads in plain text) comes back as {"text": body}.
        """
        tries = 1 + self.cfg.server_retries
        last = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)))
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.server_timeout) as response:
                    raw = response.read().decode(errors="replace")
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code != 429 and exc.code < 500:
                    raise ServerError(request.full_url, exc.code, message) from None
                last = f"HTTP {exc.code}: {message}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
                last = f"no answer within {self.cfg.server_timeout:g} s" if timed_out else str(reason)
                continue
            try:
                return json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                return {"text": raw}
        raise ConnectionError(
            f"sampling server {request.full_url} failed {tries} time(s); last: {last}. Check that it is running "
            "(e.g. `vllm serve MODEL --port 8000`) and that sampling.server_url is its API root "
            "(http://host:8000/v1); sampling.server_timeout and sampling.server_retries bound the wait."
        )

    def close(self) -> None:
        """Nothing to free here: the server outlives the sampler."""


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode(errors="replace")
    except Exception:
        return exc.reason or ""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:500] or str(exc.reason)
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
