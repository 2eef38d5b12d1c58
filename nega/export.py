"""What a run learned, as TRL datasets: `nega export RUN --to DIR | --hub REPO [--what KIND]`.

Each kind is read from the files of one finished stage (the stage names are those the method's run.py
declares) and written with `datasets.Dataset.save_to_disk` to its own folder, `DIR/<kind>/`, so
`datasets.load_from_disk("DIR/steps")` opens it; `--hub` pushes each kind as a configuration of one
dataset repository (`load_dataset(REPO, "steps")`).

- `steps` (per-step RL, stage `advantages`): TRL stepwise supervision, one row per negative,
  `{prompt, completions, labels}`: the negative's steps up to and including its first pit, labelled
  true before the pit and false at it; the steps after the pit are dropped (their labels would be the
  pit's consequence, not evidence). A step keeps its own line end, so `"".join(completions)` is the
  prefix the rollouts continued.
- `pairs` (per-step RL, stage `pairs`): TRL preference, `{prompt, chosen, rejected}`: a right π_sft
  solution against the negative cut after its first pit, the per-step DPO pairs the run trained on.
- `self-samples` (D²O, stage `reflogps`): TRL unpaired preference, `{prompt, completion, label}`: the
  starting model's own samples labelled true and the human negatives labelled false, as the first
  round trained on them.

Prompts are standard (text) rows holding the prompt as the model saw it, its chat template applied:
the labels and pairs were earned on exactly that text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RECIPE = "recipe.yaml"


class ExportError(Exception):
    """A run that cannot be exported as asked; the message names the run, the stage and the fix."""


class HubPushError(ExportError):
    """The Hub refused the dataset or could not be reached."""


@dataclass(frozen=True)
class Kind:
    """One export: the method whose run holds it, the stage it reads, and its TRL type."""

    method: str
    stage: str
    trl_type: str
    columns: tuple[str, ...]


KINDS: dict[str, Kind] = {
    "steps": Kind("stepneg", "advantages", "stepwise supervision", ("prompt", "completions", "labels")),
    "pairs": Kind("stepneg", "pairs", "preference", ("prompt", "chosen", "rejected")),
    "self-samples": Kind("d2o", "reflogps", "unpaired preference", ("prompt", "completion", "label")),
}


def kinds_of(method: str) -> list[str]:
    return [name for name, kind in KINDS.items() if kind.method == method]


def run_method(run_dir: Path) -> str:
    """The method of the run folder's recipe; an ExportError for a folder `nega run` did not make."""
    import yaml

    path = Path(run_dir) / RECIPE
    if not Path(run_dir).is_dir():
        raise ExportError(
            f"{run_dir}: no such folder; give a run folder made by `nega run` (e.g. runs/toy-stepneg)"
        )
    if not path.is_file():
        raise ExportError(
            f"{run_dir} is not a run folder (no {RECIPE}); give a folder made by `nega run` (e.g. runs/toy-stepneg)"
        )
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ExportError(f"{path}: cannot be read ({exc})") from None
    method = recipe.get("method") if isinstance(recipe, dict) else None
    if not isinstance(method, str):
        raise ExportError(f"{path}: no `method` key; is this a run folder made by `nega run`?")
    return method


def finished_stage(run_dir: Path, name: str) -> Path:
    """The folder `NN-<name>` of a finished stage (its manifest written); an ExportError naming the stage
    and how to finish it otherwise."""
    run_dir = Path(run_dir)
    pattern = re.compile(rf"\d+-{re.escape(name)}")
    folders = sorted(p for p in run_dir.iterdir() if p.is_dir() and pattern.fullmatch(p.name))
    resume = f"`nega run {run_dir / RECIPE} --output-dir {run_dir}` resumes it"
    if not folders:
        raise ExportError(f"{run_dir}: stage {name} has not run yet (no folder NN-{name}); {resume}")
    if not (folders[-1] / "manifest.json").is_file():
        raise ExportError(f"{run_dir}: stage {folders[-1].name} is unfinished (no manifest.json); {resume}")
    return folders[-1]


def stepwise_rows(advantages: list[dict], prompts: dict[int, str]) -> list[dict]:
    """TRL stepwise supervision rows from the advantages stage: each negative's steps 1..c (c its first
    pit, 1-based), labelled true before c and false at c."""
    rows = []
    for solution in advantages:
        if solution.get("correct"):
            continue  # valued right samples (AWR) have no pit to label
        pit = solution["pit"]
        rows.append(
            {
                "prompt": prompts[solution["problem"]],
                "completions": solution["steps"][:pit],
                "labels": [True] * (pit - 1) + [False],
            }
        )
    return rows


def preference_rows(pairs: list[dict]) -> list[dict]:
    """TRL preference rows from the per-step DPO pairs."""
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def unpaired_rows(examples: list[dict]) -> list[dict]:
    """TRL unpaired preference rows from D²O's examples: self-samples true, the negative false."""
    rows = []
    for example in examples:
        rows += [{"prompt": example["prompt"], "completion": text, "label": True} for text in example["self"]]
        rows.append({"prompt": example["prompt"], "completion": example["rejected"], "label": False})
    return rows


def _pair_prompts(pairs_dir: Path) -> dict[int, str]:
    """problem index -> its rendered prompt, from the pairs stage (the sampling stages keep no prompts)."""
    from nega.pipeline import read_jsonl

    prompts: dict[int, str] = {}
    for name in ("dpo.jsonl", "outcome_dpo.jsonl"):
        path = pairs_dir / name
        if path.is_file():
            for row in read_jsonl(path):
                prompts.setdefault(row["problem"], row["prompt"])
    return prompts


def export_rows(run_dir: Path, kind: str) -> list[dict]:
    """The rows of one export kind, read from the run's finished stage."""
    from nega.pipeline import read_jsonl

    stage = finished_stage(run_dir, KINDS[kind].stage)
    if kind == "steps":
        prompts = _pair_prompts(finished_stage(run_dir, "pairs"))
        advantages = read_jsonl(stage / "advantages.jsonl")
        missing = sorted({a["problem"] for a in advantages if not a.get("correct")} - set(prompts))
        if missing:
            raise ExportError(
                f"{stage}: problems {missing[:5]} have negatives but no pairs to take their prompt from; "
                f"the pairs stage is older than the advantages stage: `nega run {Path(run_dir) / RECIPE} "
                f"--output-dir {run_dir}` brings it up to date"
            )
        return stepwise_rows(advantages, prompts)
    if kind == "pairs":
        return preference_rows(read_jsonl(stage / "dpo.jsonl"))
    return unpaired_rows(read_jsonl(stage / "examples.jsonl"))


def features(kind: str):
    """The Arrow schema of a kind, given so an empty export still has TRL's columns and types."""
    from datasets import Features, Sequence, Value

    text = Value("string")
    return Features(
        {
            "steps": {"prompt": text, "completions": Sequence(text), "labels": Sequence(Value("bool"))},
            "pairs": {"prompt": text, "chosen": text, "rejected": text},
            "self-samples": {"prompt": text, "completion": text, "label": Value("bool")},
        }[kind]
    )


def resolve_kinds(run_dir: Path, what: list[str] | None) -> tuple[str, list[str]]:
    """(the run's method, the kinds to export): `what`, else every kind the method has."""
    method = run_method(run_dir)
    offered = kinds_of(method)
    if not offered:
        exporters = ", ".join(sorted({k.method for k in KINDS.values()}))
        raise ExportError(
            f"{run_dir} is a {method} run; nega exports runs of {exporters} ({', '.join(KINDS)})"
        )
    for name in what or []:
        if name not in KINDS:
            raise ExportError(f"--what {name!r} is not an export; choose from {', '.join(KINDS)}")
        if name not in offered:
            raise ExportError(
                f"--what {name} is exported from {KINDS[name].method} runs; {run_dir} is a {method} run, "
                f"which exports {', '.join(offered)}"
            )
    return method, list(dict.fromkeys(what or offered))


def export_run(
    run_dir: Path,
    *,
    to: Path | None = None,
    hub: str | None = None,
    what: list[str] | None = None,
    private: bool = True,
) -> dict[str, dict]:
    """Export the run's kinds to `to` (one `save_to_disk` folder per kind) and/or push them to `hub`.

    Every kind is read and checked before anything is written, so a missing stage writes nothing.
    Returns {kind: {"rows": n, "path": folder or None, "trl_type": ...}}."""
    from datasets import Dataset

    if to is None and hub is None:
        raise ExportError("say where to export: --to DIR (a local folder) or --hub ORG/NAME (a Hub dataset)")
    if hub is not None:
        from nega.hub import HubError, check_repo_id

        try:
            check_repo_id(hub, "--hub")
        except HubError as exc:
            raise ExportError(str(exc)) from None
    run_dir = Path(run_dir)
    _, kinds = resolve_kinds(run_dir, what)
    tables = {kind: Dataset.from_list(export_rows(run_dir, kind), features=features(kind)) for kind in kinds}
    out: dict[str, dict] = {}
    for kind, table in tables.items():
        folder = None
        if to is not None:
            folder = Path(to) / kind
            _save(table, folder)
        out[kind] = {"rows": len(table), "path": folder, "trl_type": KINDS[kind].trl_type}
    if hub is not None:
        for kind, table in tables.items():
            _push(table, hub, kind, private)
    return out


def _save(table, folder: Path) -> None:
    """Write beside the old export and swap it in, so an interrupted export leaves the old one whole."""
    import shutil

    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    table.save_to_disk(str(partial))
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def _push(table, repo_id: str, kind: str, private: bool) -> None:
    from nega.hub import redact

    try:
        table.push_to_hub(repo_id, config_name=kind, private=private)
    except Exception as exc:  # offline, auth, permission: all mean the push did not happen
        raise HubPushError(
            redact(
                f"pushing {kind} to the Hub dataset {repo_id} failed: {type(exc).__name__}: {exc}\n"
                "Check the network (HF_HUB_OFFLINE must be unset), and that HF_TOKEN (or `hf auth login`) "
                "may write to the organisation; or export locally with --to DIR."
            )
        ) from None
