"""The `nega` command line: run, validate, list and sample recipes; evaluate; push.

Only typer, rich and the recipe schema are imported at start-up, so `nega --help` and `nega validate`
return at once; each command imports what it needs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

from nega.cli.inputs import check_recipe_data, fail, load

app = typer.Typer(
    name="nega",
    help="Align and distill language models by learning from negatives (D²O, per-step negative RL, QCRD).",
    no_args_is_help=True,
    # -h as well as --help, on every command: click hands the names down to each sub-command.
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from nega import __version__

        typer.echo(f"nega {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print nega's version and exit."
    ),
) -> None:
    # The app's help (typer.Typer(help=...)) describes nega; this only holds the top-level options.
    pass


def _complete_recipe(incomplete: str) -> list[str]:
    """Shell completion of RECIPE: built-in names and YAML files; none left, the shell lists files."""
    import glob

    from nega.config import builtin_recipes

    names = [name for name in builtin_recipes() if name.startswith(incomplete)]
    files = glob.glob(glob.escape(incomplete) + "*.y*ml")
    return names + sorted(f for f in files if f.endswith((".yaml", ".yml")))


RecipeArg = typer.Argument(
    ...,
    help="built-in recipe name (see `nega recipes`) or path to a YAML file",
    autocompletion=_complete_recipe,
)
OverridesArg = typer.Argument(None, help="KEY=VALUE overrides, e.g. train.lr=1e-5 sampling.n=4")


def open_run(cfg, output_dir: Path | None, launcher=None, *, keep_results: bool = False):
    """The run folder, locked for this process; another live `nega run` on it stops this one at once."""
    from nega.pipeline import Run, RunLockedError

    try:
        return Run(cfg, output_dir, launcher=launcher, keep_results=keep_results)
    except RunLockedError as exc:
        fail(str(exc), code=1)


def method_entry(method: str):
    """The function running a whole recipe of `method`, from the method table (nega.config.registry.METHODS)."""
    from nega.config.registry import METHODS

    module, func = METHODS[method].run.split(":")
    return getattr(importlib.import_module(module), func)


@app.command()
def run(
    recipe: str = RecipeArg,
    overrides: list[str] = OverridesArg,
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="run folder (default runs/<name>)"
    ),
    gpus: int | None = typer.Option(
        None, min=1, help="training processes per node, one per GPU (default: every visible GPU, else 1)"
    ),
    nodes: int = typer.Option(
        1, min=1, help="machines sharing a filesystem; run the same command on each with its --node-rank"
    ),
    node_rank: int = typer.Option(0, min=0, help="this machine's index, 0..nodes-1"),
    main_address: str = typer.Option("127.0.0.1", help="address of the node with rank 0"),
    main_port: int = typer.Option(29500, help="port on the rank-0 node for the process group"),
    cpu: bool = typer.Option(False, help="train with CPU processes (gloo) instead of GPUs"),
):
    """Run a recipe end to end; finished stages are skipped, so re-running resumes an interrupted run.

    Training stages shard over --gpus processes per node (DeepSpeed ZeRO per `train.deepspeed.stage`);
    sampling and evaluation run once, in this process, with vLLM over all local GPUs. With --nodes M,
    node 0 runs the pipeline and the other nodes join its training launches.
    """
    from nega.data import DataError
    from nega.launch import Coordinator, Launcher, Topology, training_processes
    from nega.models import ModelError
    from nega.training import NonFiniteLossError

    if node_rank >= nodes:
        fail(f"--node-rank {node_rank} must be below --nodes {nodes}")
    asked = gpus
    if gpus is None:
        from nega.plan import DeviceFacts

        gpus = training_processes(None, DeviceFacts.detect().gpus, cpu=cpu)
    topo = Topology(gpus, nodes, node_rank, main_address, main_port, cpu)
    cfg = load(recipe, overrides)
    if node_rank > 0:
        # Node 0 runs the pipeline; this node only starts its ranks of each training launch.
        from nega.launch import follow

        folder = (output_dir or Path(cfg.output_dir) / cfg.name) / "nodes"
        status, message = follow(folder, topo, echo=lambda text: typer.echo(text, err=True))
        if status != "ok":
            fail(f"node 0 stopped the run: {message}", code=1)
        typer.echo(f"[nega] node {node_rank}: done", err=True)
        return
    if not cpu:
        from nega.cli.doctor import Environment, cuda_request_problem

        missing = cuda_request_problem(Environment.detect(gpus_requested=asked if asked and asked > 1 else 0))
        if missing:
            typer.secho(f"[nega] warning: {missing}", err=True, fg=typer.colors.YELLOW)
    check_recipe_data(cfg)  # before the base model is downloaded or converted
    launcher = Launcher(topo)
    run_dir = open_run(cfg, output_dir, launcher)
    typer.echo(f"[nega] run {cfg.name} ({cfg.method}) -> {run_dir.dir}", err=True)
    if nodes > 1:
        # Node 0 announces each training launch there; the other nodes' `nega run` joins them.
        launcher.coordinator = Coordinator(run_dir.dir / "nodes")
    coordinator = launcher.coordinator
    try:
        with run_dir:  # the run's sampling engines close when it ends, failed or not
            method_entry(cfg.method)(cfg, run_dir)
    except DataError as exc:
        _stop_followers(coordinator, f"data error: {exc}")
        fail(f"data error: {exc}")
    except ModelError as exc:
        _stop_followers(coordinator, f"model error: {exc}")
        fail(f"model error: {exc}")
    except NonFiniteLossError as exc:
        _stop_followers(coordinator, str(exc))
        fail(str(exc), code=1)
    except BaseException as exc:
        _stop_followers(coordinator, f"{type(exc).__name__}: {exc}")
        raise
    if coordinator is not None:
        coordinator.finish("ok")
    if cfg.hub.repo_id:
        from nega.hub import HubError, hub_push_stage

        try:
            pushed = hub_push_stage(run_dir)
        except HubError as exc:
            fail(str(exc), code=1)
        typer.echo(f"[nega] pushed to {pushed['url'] or cfg.hub.repo_id}", err=True)
    typer.echo(f"[nega] done: {run_dir.dir / 'report.md'}", err=True)


def _stop_followers(coordinator, message: str) -> None:
    if coordinator is not None:
        coordinator.finish("failed", message)


@app.command()
def validate(recipe: str = RecipeArg, overrides: list[str] = OverridesArg):
    """Check a recipe (schema, files, the data's columns) and print it resolved, with every default filled
    in. Loads no model."""
    cfg = load(recipe, overrides)
    check_recipe_data(cfg)
    typer.echo(cfg.to_yaml(), nl=False)


@app.command("recipes")
def list_recipes():
    """List the built-in recipes."""
    import yaml

    from nega.config import builtin_recipes
    from nega.console import print_table

    rows = []
    for name, path in builtin_recipes().items():
        data = yaml.safe_load(path.read_text()) or {}
        source = data.get("data", {}) or {}
        rows.append(
            [
                name,
                str(data.get("method", "")),
                str((data.get("model") or {}).get("name", "")),
                str(source.get("dataset") or source.get("path") or ""),
                str(data.get("description", "")),
            ]
        )
    print_table("built-in recipes (nega run NAME)", ["name", "method", "model", "data", "description"], rows)


@app.command("models")
def list_models():
    """List the packaged pretrained models `model.name` accepts, whether each is installed, and where its
    converted folder is (converted once, on first use, into $NEGA_CACHE/models or ~/.cache/nega/models)."""
    from nega.console import print_table
    from nega.models import KNOWN_MODELS, ModelError, converted_folder, model_cache_dir, packaged_gguf

    rows = []
    for name, known in KNOWN_MODELS.items():
        try:
            path = packaged_gguf(name)
        except ModelError:
            rows.append([name, known.source, known.license, f"not installed: {known.install}", ""])
            continue
        folder = converted_folder(path)
        rows.append([name, known.source, known.license, str(path), str(folder) if folder else "on first use"])
    # One small table per model (its fields as rows): the paths are long, the model's name stays whole.
    typer.echo(f"packaged models (model.name: NAME); cache {model_cache_dir()}")
    fields = ["source", "license", "GGUF file", "converted folder"]
    for name, *values in rows:
        print_table("", ["", name], [[f, v] for f, v in zip(fields, values, strict=True)])
    typer.echo("Any .gguf file works too: model.name=/path/to/model.gguf", err=True)


@app.command()
def sample(
    recipe: str = RecipeArg,
    overrides: list[str] = OverridesArg,
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder to sample from"),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o"),
):
    """Run only the sampling stage: `sampling.n` completions per prompt of the recipe's data."""
    from nega.data import DataError
    from nega.models import ModelError
    from nega.sampler_stage import sample_prompts

    cfg = load(recipe, overrides)
    run_dir = open_run(cfg, output_dir, keep_results=True)
    try:
        with run_dir:
            path = sample_prompts(run_dir, adapter=str(adapter) if adapter else None)
    except DataError as exc:
        fail(f"data error: {exc}")
    except ModelError as exc:
        fail(f"model error: {exc}")
    typer.echo(f"[nega] samples: {path}", err=True)


# Sub-command groups living in their own modules (evaluation, Hub); each adds itself to `app`.
# They import their heavy dependencies inside the commands, so start-up stays instant.
for _module in ("nega.cli.eval", "nega.cli.push", "nega.cli.runs", "nega.cli.data", "nega.cli.export"):
    importlib.import_module(_module).register(app)
importlib.import_module("nega.cli.plan").register(app)
importlib.import_module("nega.cli.doctor").register(app)


def main() -> None:
    from nega.console import install_message_hooks

    install_message_hooks()
    app(prog_name="nega")


if __name__ == "__main__":
    sys.exit(main())
