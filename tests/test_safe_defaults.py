"""Safe defaults, asserted over nega's source and its saved folders: no unpickling of untrusted files,
weights written as safetensors only, remote code only when a recipe asks for it, YAML read safely, and
Hub tokens never read, passed or printed by nega."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nega
from nega.config import LoraConfig, ModelConfig

SOURCE = Path(nega.__file__).parent
FILES = sorted(SOURCE.rglob("*.py"))
PICKLE_MODULES = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def keyword(node: ast.Call, name: str) -> str | None:
    found = [k.value for k in node.keywords if k.arg == name]
    return ast.unparse(found[0]) if found else None


def problems(path: Path) -> list[str]:
    """Every unsafe default in one source file, as `file:line: what`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in PICKLE_MODULES for n in names):
                found.append(f"{where}: imports a pickle-like module")
        # The token variables' names appear only in hub.py, which reads them to mask their values.
        if isinstance(node, ast.Constant) and node.value in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            if path.name != "hub.py":
                found.append(f"{where}: names a Hub token variable")
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name == "torch.load" and keyword(node, "weights_only") != "True":
            found.append(f"{where}: torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            found.append(f"{where}: {name}; use yaml.safe_load")
        if name in ("torch.save", "np.save", "numpy.save"):
            found.append(f"{where}: {name} pickles; write safetensors")
        receiver = name.removesuffix(".save_pretrained")
        if name.endswith(".save_pretrained") and "tokenizer" not in receiver:
            if keyword(node, "safe_serialization") != "True":
                found.append(f"{where}: {name} without safe_serialization=True")
        remote = keyword(node, "trust_remote_code")
        if remote is not None and "trust_remote_code" not in remote:
            found.append(f"{where}: trust_remote_code={remote}, not the recipe's model.trust_remote_code")
        if keyword(node, "token") is not None or keyword(node, "use_auth_token") is not None:
            found.append(f"{where}: passes a Hub token to {name}")
        if name.endswith("get_token"):
            found.append(f"{where}: reads the Hub token")
    return found


def test_nega_source_has_safe_defaults():
    assert len(FILES) > 50
    assert [p for path in FILES for p in problems(path)] == []
    assert ModelConfig(name="x").trust_remote_code is False


def test_the_scan_catches_each_unsafe_default(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\n"
        "torch.load(path)\n"
        "torch.load(path, weights_only=False)\n"
        "yaml.load(text)\n"
        "torch.save(state, path)\n"
        "model.save_pretrained(out)\n"
        "AutoModel.from_pretrained(name, trust_remote_code=True)\n"
        "HfApi().upload_folder(folder_path=out, token=secret)\n"
        "os.environ['HF_TOKEN']\n"
        "tokenizer.save_pretrained(out)\n"  # tokenizers have no weights: fine
        "model.save_pretrained(out, safe_serialization=True)\n"  # fine
        "AutoModel.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)\n"  # fine
    )
    assert [p.split(":")[1] for p in problems(bad)] == [str(n) for n in range(1, 10)]


def pickled(path: Path) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or a torch zip archive (which holds one)."""
    head = path.read_bytes()[:4]
    return path.suffix in PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK\x03\x04"


@pytest.mark.parametrize("what", ["adapter", "merged"])
def test_saved_model_folders_hold_no_pickles(tiny_model_dir, tmp_path, what):
    from nega.models import load_policy, merge_adapter, save_adapter

    model, tokenizer = load_policy(tiny_model_dir, ModelConfig(name="x"), LoraConfig(r=4, alpha=8), seed=0)
    folder = save_adapter(model, tokenizer, tmp_path / "adapter")
    if what == "merged":
        folder = merge_adapter(tiny_model_dir, folder, tmp_path / "merged")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert [p.name for p in files if pickled(p)] == []
