"""The rows a method will train on, as `nega data RECIPE` prints them: each method's own reading of
the recipe's data (format, `data.fields`, its converter), the prompt through the chat template, and
the token counts of prompt and response. Loads the tokenizer, never the model.

A view is `{"prompt": chat messages, "response": text or None, "notes": {name: value}}`; `METHOD_VIEWS`
names the function giving a method's views, and a method missing there shows the raw rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def d2o_views(recipe) -> list[dict]:
    from nega.align.d2o.data import load_negatives

    rows, _, _ = load_negatives(recipe)
    return [
        {"prompt": r["prompt"], "response": r["rejected"], "notes": {"response is": "the negative"}}
        for r in rows
    ]


def stepneg_views(recipe) -> list[dict]:
    from nega.align.stepneg.data import problem_reader
    from nega.data import convert_rows, load_rows

    rows, source = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed)
    read = problem_reader(recipe.data.format, rows[0], source)
    problems, _ = convert_rows(rows, read, source=source, on_bad_row=recipe.data.on_bad_row)
    return [
        {
            "prompt": [{"role": "user", "content": p["question"]}],
            "response": p["solution"],
            "notes": {"response is": "the gold solution (SFT)", "answer": p["answer"]},
        }
        for p in problems
    ]


def qcrd_views(recipe) -> list[dict]:
    from nega.distill.qcrd import data

    records, _ = data.load_teacher_records(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed)
    return [
        {
            "prompt": data.explain_prompt(r["question"]),
            "response": r["rationales"][0]["text"] if r["rationales"] else None,
            "notes": {"label": r["label"], "teacher rationales": len(r["rationales"])},
        }
        for r in records
    ]


def sft_views(recipe) -> list[dict]:
    from nega.data import convert_rows, load_rows
    from nega.sft import sft_pair_of

    rows, source = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed)
    pairs, _ = convert_rows(rows, sft_pair_of, source=source, on_bad_row=recipe.data.on_bad_row)
    return [{"prompt": p["prompt"], "response": p["response"], "notes": {}} for p in pairs]


METHOD_VIEWS: dict[str, Callable] = {
    "d2o": d2o_views,
    "stepneg": stepneg_views,
    "qcrd": qcrd_views,
    "sft": sft_views,
}


def method_views(recipe, rows: int) -> list[dict]:
    """The first `rows` views of the recipe's data as its method reads them."""
    # Read a few more rows than shown: a converter may skip some (safe pairs, rows labelled true).
    limit = rows * 4 if recipe.data.limit is None else min(recipe.data.limit, rows * 4)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"limit": limit})})
    view = METHOD_VIEWS.get(recipe.method)
    if view is None:
        from nega.data import load_rows

        raw, _ = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed)
        return [{"prompt": None, "response": None, "notes": r} for r in raw[:rows]]
    return view(recipe)[:rows]


def preview_tokenizer(recipe):
    """(tokenizer, None), or (None, why not) when the tokenizer cannot be had without building or
    converting a model: the toy model is built by `nega run`; a packaged model before its conversion."""
    from nega.models import KNOWN_MODELS, converted_folder, load_tokenizer, packaged_gguf

    name = recipe.model.name
    if name == "toy":
        return None, "the toy model's tokenizer is built by `nega run` (its toy-model stage)"
    if name in KNOWN_MODELS or name.endswith(".gguf"):
        try:
            gguf = packaged_gguf(name) if name in KNOWN_MODELS else Path(name).expanduser()
            folder = converted_folder(gguf)
            if folder is None:
                # Not converted yet: the GGUF file carries the tokenizer, read without the weights.
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), None
        except Exception as exc:  # not installed, unreadable: the rows are still worth showing
            return None, f"no tokenizer for {name}: {type(exc).__name__}: {exc}"
        name = str(folder)
    try:
        return load_tokenizer(name, recipe.model), None
    except Exception as exc:  # offline, gated, a typo: show the rows anyway
        return None, f"no tokenizer for {name}: {type(exc).__name__}: {exc}"


def render_views(views: list[dict], tokenizer) -> list[dict]:
    """Each view with `text` (the prompt through the chat template) and token counts when a tokenizer
    is at hand."""
    from nega.sampling.base import render_prompt

    out = []
    for v in views:
        v = dict(v)
        if v["prompt"] is not None and tokenizer is not None:
            v["text"] = render_prompt(tokenizer, v["prompt"])
            v["prompt_tokens"] = len(tokenizer(v["text"], add_special_tokens=False)["input_ids"])
            if v["response"] is not None:
                v["response_tokens"] = len(tokenizer(v["response"], add_special_tokens=False)["input_ids"])
        elif v["prompt"] is not None:
            v["text"] = "".join(f"{m['role']}: {m['content']}\n" for m in v["prompt"])
        out.append(v)
    return out
