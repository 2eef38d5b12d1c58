"""Data-parallel sampling: several vLLM engines, each in its own process on its own slice of the GPUs.

The plan (`nega.plan.sampling_layout`) gives tensor-parallel size TP, the largest that divides the
model's heads, and data-parallel size DP = GPUs // TP (or `sampling.data_parallel_size`). One vLLM
offline engine uses TP GPUs only, so with DP > 1 a run's engine for a model is DP replicas: processes
started with `CUDA_VISIBLE_DEVICES` set to their TP devices, each holding one engine (a `VLLMSampler`,
or merged-adapter engines as `sampling.adapter_mode` says) for the whole run, closed with it.

A generate call splits its prompts into DP contiguous blocks (a prompt's n samples stay on one replica,
whose prefix cache then holds that prompt once), sends every block at once, waits for all of them and
joins the blocks in the caller's order. Each request is seeded from the call's seed and the prompt's
index in the caller's list (`first_index`), never from the replica, so the completions are the same at
any DP. Adapters travel by folder in each call; every replica loads them itself, as one engine does.

    sampler = ReplicaSampler(model_path, layout, arguments)   # arguments: make_sampler's
    sampler.generate(prompts, n=4, seed=1)                    # blocks on replicas 0..DP-1, joined

The replicas run `python -m nega.sampling.replicas FD` and talk over a pipe inherited as FD; on a CPU
(`sampling.data_parallel_size` > 1 there) they are plain processes without CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from nega.sampling.base import Completion, Prompt

READY, OK, FAILED = "ready", "ok", "failed"
# A replica's engine start and its generate calls take as long as they take (minutes for a big model);
# the wait for a reply only wakes this often to notice a replica process that died without a word.
POLL_S = 1.0
STOP_S = 60.0  # a replica closing its engine; killed after this


class ReplicaError(RuntimeError):
    """A replica failed: it names the replica and its devices."""


def prompt_blocks(count: int, replicas: int) -> list[range]:
    """`count` prompt indices in `replicas` contiguous blocks, one per replica, in order: sizes differ by
    at most one, the larger first; replicas beyond `count` get empty blocks."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: at least one replica is needed")
    size, extra = divmod(count, replicas)
    blocks, start = [], 0
    for index in range(replicas):
        stop = start + size + (1 if index < extra else 0)
        blocks.append(range(start, stop))
        start = stop
    return blocks


def join_blocks(blocks: list[range], outputs: list[list]) -> list:
    """The outputs of each block (one item per prompt) back in the caller's order."""
    joined: list = [None] * sum(len(block) for block in blocks)
    for block, output in zip(blocks, outputs, strict=True):
        if len(output) != len(block):
            raise ReplicaError(f"a replica answered {len(output)} prompts of a block of {len(block)}")
        for index, item in zip(block, output, strict=True):
            joined[index] = item
    return joined


def replica_devices(tensor_parallel_size: int, replicas: int, gpus: int, visible: str | None) -> list:
    """The CUDA_VISIBLE_DEVICES of each replica: consecutive slices of `tensor_parallel_size` of the
    devices this process sees (its own CUDA_VISIBLE_DEVICES, `visible`, when set: ids or UUIDs; else
    0..gpus-1). None for each replica on a CPU (`gpus` 0)."""
    if gpus == 0:
        return [None] * replicas
    seen = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    if tensor_parallel_size * replicas > len(seen):
        raise ReplicaError(
            f"{replicas} sampling replicas of {tensor_parallel_size} GPU(s) need "
            f"{tensor_parallel_size * replicas} GPUs, but {len(seen)} are visible ({','.join(seen)}); "
            "lower sampling.data_parallel_size"
        )
    return [
        ",".join(seen[r * tensor_parallel_size : (r + 1) * tensor_parallel_size]) for r in range(replicas)
    ]


def replica_environment(environ: dict, devices: str | None) -> dict:
    """A replica's environment: this one, pinned to `devices`, its progress bars off (the caller draws
    one bar for the call), and this process's nega first on the path, so the replica imports the same
    code whatever the working directory."""
    env = dict(environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    env["NEGA_QUIET"] = "1"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [environ.get("PYTHONPATH")])])
    return env


def label(index: int, devices: str | None) -> str:
    return f"sampling replica {index} ({'CPU' if devices is None else f'CUDA_VISIBLE_DEVICES={devices}'})"


class ReplicaProcess:
    """One replica: a `python -m nega.sampling.replicas FD` process and its end of the pipe.

    `send(message)` and `receive()` pass picklable tuples; `receive` raises ReplicaError when the
    process ends without answering (killed for memory, a crash inside the engine)."""

    def __init__(self, index: int, env: dict, arguments: dict):
        import multiprocessing

        self.index, self.devices = index, env.get("CUDA_VISIBLE_DEVICES") if arguments.get("gpus") else None
        self.conn, theirs = multiprocessing.Pipe()
        try:
            # A session of its own: a Ctrl-C meant for nega does not kill the replica mid-call (the run's
            # close stops it), and `stop` can kill the engine processes vLLM starts under it.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nega.sampling.replicas", str(theirs.fileno())],
                env=env,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        finally:
            theirs.close()  # theirs now lives in the replica alone: its exit closes the pipe
        self.conn.send(arguments)

    def send(self, message) -> None:
        try:
            self.conn.send(message)
        except OSError as error:
            raise ReplicaError(f"{label(self.index, self.devices)} is gone: {error}") from None

    def receive(self):
        while not self._poll(POLL_S):
            code = self.process.poll()
            if code is not None and not self._poll(0):
                raise ReplicaError(f"{label(self.index, self.devices)} exited with code {code}")
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the replica's end closed, or reset as it died
            code = self.process.wait()
            raise ReplicaError(f"{label(self.index, self.devices)} exited with code {code}") from None

    def _poll(self, timeout: float) -> bool:
        """Whether an answer (or the pipe's end) can be read now; a reset pipe counts as readable."""
        try:
            return self.conn.poll(timeout)
        except OSError:
            return True

    def stop(self, timeout: float = STOP_S) -> None:
        """Ask the replica to close its engine; kill it and its engine processes if it has not within
        `timeout` seconds (a replica still starting reads the request only once its engine is up)."""
        if self.process.poll() is None:
            try:
                self.conn.send(("close", {}))
            except OSError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.conn.close()


class ReplicaSampler:
    """The Sampler protocol over `layout.data_parallel_size` replicas (see the module docstring).

    `arguments` are what one replica's `make_sampler` call needs: `model_path`, `cfg` (the sampling
    config), `gpus` (0: CPU replicas) and its keyword arguments (LoRA rank, adapters, model length).
    `start` (default ReplicaProcess) starts one replica from its index, environment and arguments, and is
    injected by tests to see what would start. All replicas start at once; if any fails, the others are
    stopped and ReplicaError names the failed ones."""

    def __init__(
        self,
        layout,
        arguments: dict,
        *,
        start: Callable | None = None,
        environ: dict | None = None,
    ):
        from nega.progress import progress_bar

        start = start or ReplicaProcess
        environ = dict(os.environ if environ is None else environ)
        self.layout = layout
        self.devices = replica_devices(
            layout.tensor_parallel_size,
            layout.data_parallel_size,
            layout.gpus,
            environ.get("CUDA_VISIBLE_DEVICES"),
        )
        self.replicas: list = []
        failures = []
        name = Path(str(arguments["model_path"])).name
        with progress_bar(
            f"starting {len(self.devices)} vLLM replicas on {name}", total=len(self.devices)
        ) as advance:
            for index, devices in enumerate(self.devices):
                try:
                    self.replicas.append(start(index, replica_environment(environ, devices), arguments))
                except Exception as error:  # e.g. out of processes: the started ones are stopped below
                    failures.append(f"{label(index, devices)} did not start: {error}")
                    break
            for index, replica in enumerate(self.replicas):
                if failures:
                    break  # the rest are stopped, not waited for
                try:
                    status, payload = replica.receive()
                except ReplicaError as error:
                    status, payload = FAILED, str(error)
                if status != READY:
                    failures.append(f"{label(index, self.devices[index])} failed to start: {payload}")
                advance(1)
        if failures:
            self.close(timeout=STOP_S / 10)
            raise ReplicaError("\n".join(failures) + "\n(the other replicas were stopped)")

    def generate(
        self, prompts: list[Prompt], *, description: str = "sampling", **options
    ) -> list[list[Completion]]:
        if not self.replicas:
            raise RuntimeError("this ReplicaSampler was closed; make a new one to sample again")
        blocks = prompt_blocks(len(prompts), len(self.replicas))
        busy = {index: block for index, block in enumerate(blocks) if block}
        requests = {
            index: ("generate", {**options, "prompts": prompts[block.start : block.stop], "first_index": block.start})
            for index, block in busy.items()
        }  # fmt: skip
        outputs = self._ask(requests, description, total=len(prompts) * options.get("n", 1))
        return join_blocks(list(busy.values()), outputs)

    def hand_back(self) -> None:
        """Every replica gives its GPU memory back until its next generate call."""
        self._ask({index: ("hand_back", {}) for index in range(len(self.replicas))})

    def _ask(self, requests: dict, description: str | None = None, total: int = 0) -> list:
        """Send each replica its request (index -> message), all before any answer is read, so they
        run at once; then every answer, in the replicas' order. All answers are read before a failure
        is raised, so the replicas that answered are ready for the next call."""
        from contextlib import nullcontext

        from nega.progress import progress_bar

        answers, failures, asked = [], [], []
        for index, message in requests.items():
            try:
                self.replicas[index].send(message)
                asked.append(index)
            except ReplicaError as error:
                failures.append(str(error))
        bar = progress_bar(description, total=total) if description else nullcontext(None)
        with bar as advance:
            for index in asked:
                try:
                    status, payload = self.replicas[index].receive()
                except ReplicaError as error:
                    status, payload = FAILED, str(error)
                if status != OK:
                    failures.append(f"{label(index, self.devices[index])} failed: {payload}")
                    continue
                answers.append(payload)
                if advance is not None and payload:
                    advance(sum(len(group) for group in payload))
        if failures:
            raise ReplicaError("\n".join(failures))
        return answers

    def close(self, timeout: float = STOP_S) -> None:
        """Stop every replica, which closes its engine; safe to call twice."""
        replicas, self.replicas = self.replicas, []
        for replica in replicas:  # all close their engines at once
            try:
                replica.send(("close", {}))
            except ReplicaError:
                pass  # already gone
        for replica in replicas:
            replica.stop(timeout)


def make_replicated_sampler(
    model_path: str | Path,
    cfg,
    *,
    max_lora_rank: int = 16,
    adapters: bool = True,
    max_model_len: int | None = None,
    devices=None,
    start: Callable | None = None,
):
    """`nega.sampling.make_sampler`, or a ReplicaSampler when the plan's sampling layout for `devices`
    (default: this machine's) has more than one replica: vLLM with GPUs left beyond tensor parallel, or
    `sampling.data_parallel_size` > 1. `start` starts one replica (see ReplicaSampler)."""
    import nega.sampling

    arguments = {"max_lora_rank": max_lora_rank, "adapters": adapters, "max_model_len": max_model_len}
    layout = replica_layout(model_path, cfg, adapters=adapters, devices=devices)
    if layout is None:
        return nega.sampling.make_sampler(model_path, cfg, devices=devices, **arguments)
    return ReplicaSampler(
        layout, {"model_path": str(model_path), "cfg": cfg, "gpus": layout.gpus, **arguments}, start=start
    )


def replica_layout(model_path: str | Path, cfg, *, adapters: bool, devices=None):
    """The plan's sampling layout for `model_path` on `devices` (default: this machine's) when it has
    more than one replica, else None (one engine; also every backend but vLLM)."""
    from nega.sampling.backends import vllm_available

    backend = cfg.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend != "vllm":
        return None
    replicas = getattr(cfg, "data_parallel_size", None)
    if replicas == 1:
        return None
    from nega.plan import DeviceFacts, model_facts, sampling_layout

    devices = devices or DeviceFacts.detect()
    if replicas is None and devices.gpus < 2:
        return None  # one GPU or a CPU: one replica, without reading the model's facts
    facts = model_facts(str(model_path), fetch=devices.gpus > 0)
    layout = sampling_layout(facts, devices, cfg, adapters=adapters, backend="vllm")
    return layout if layout.data_parallel_size > 1 else None


def failure(error: BaseException) -> str:
    """The replica's answer for `error`: its last line, with the whole traceback printed to the
    replica's stderr (the run's terminal or log) for the rest."""
    traceback.print_exception(error, file=sys.stderr)
    return "".join(traceback.format_exception_only(error)).strip() + " (traceback above, from the replica)"


def serve(fd: int) -> None:
    """A replica's loop: start the sampler its first message asks for, answer READY (or FAILED with the
    error), then answer (method, keyword arguments) requests until "close" or the pipe closes."""
    from multiprocessing.connection import Connection

    import nega.sampling
    from nega.plan import DeviceFacts

    conn = Connection(fd)
    arguments = conn.recv()
    model_path, cfg, gpus = arguments.pop("model_path"), arguments.pop("cfg"), arguments.pop("gpus")
    try:
        # One replica's share of the devices: its TP GPUs (CUDA_VISIBLE_DEVICES), one replica of them.
        layout_cfg = cfg.model_copy(update={"data_parallel_size": 1})
        devices = DeviceFacts.detect() if gpus else DeviceFacts()
        sampler = nega.sampling.make_sampler(model_path, layout_cfg, devices=devices, **arguments)
    except BaseException as error:
        conn.send((FAILED, failure(error)))
        return
    conn.send((READY, None))
    # vLLM seeds each request by the caller's index (`first_index`); transformers, which seeds per batch
    # and is never replicated by a run (only in tests of these processes), takes no such argument.
    parameters = inspect.signature(sampler.generate).parameters.values()
    per_prompt_seeds = any(p.name == "first_index" or p.kind is p.VAR_KEYWORD for p in parameters)
    try:
        while True:
            try:
                method, options = conn.recv()
            except EOFError:
                return
            if method == "close":
                return
            try:
                if method == "generate":
                    if not per_prompt_seeds:
                        options.pop("first_index")
                    result = sampler.generate(options.pop("prompts"), **options)
                else:
                    getattr(sampler, method, lambda: None)()
                    result = None
            except Exception as error:
                conn.send((FAILED, failure(error)))
                continue
            conn.send((OK, result))
    finally:
        sampler.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
