"""The tokens around a response: how a prompt starts and how an assistant turn ends.

Sampling and training must see the same tokens. Three places where they drift apart for a real chat
model, each handled once here:

- A prompt's first token. Prompts are tokenized with `add_special_tokens=False`, because a chat
  template writes its own special tokens; a plain model without a template would then lose the BOS
  token it was trained with. `encode_prompt` adds it back when the tokenizer adds it by default.
- The end of a response. Training appends the token that ends an assistant turn in the model's chat
  template (`<|im_end|>` for ChatML models, `<|eot_id|>` for Llama 3, `<end_of_turn>` for Gemma),
  which need not be `tokenizer.eos_token_id`; samplers stop on that same token.
- The response itself. Decoding sampled ids and tokenizing the text again need not give back the same
  ids (merges across the boundary, normalisation); `response_tokens` keeps the sampler's own ids.
"""

from __future__ import annotations

_END_ATTR = "_nega_end_of_turn_id"
_BOS_ATTR = "_nega_adds_bos"
_PROBE = "nega-end-of-turn-probe"


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS first when asked for its default special tokens."""
    cached = getattr(tokenizer, _BOS_ATTR, None)
    if cached is None:
        bos = getattr(tokenizer, "bos_token_id", None)
        ids = tokenizer("a")["input_ids"] if bos is not None else []
        cached = bool(ids) and ids[0] == bos
        _remember(tokenizer, _BOS_ATTR, cached)
    return cached


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, with the BOS token the model expects in front.

    A chat template that writes BOS itself yields it already and nothing is added, so the rule is
    idempotent: a prompt that already starts with BOS never gets a second one.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: the first special token the chat template writes after an
    assistant message's content, else `eos_token_id` (plain models, or templates that end turns with
    ordinary text)."""
    cached = getattr(tokenizer, _END_ATTR, None)
    if cached is not None:
        return cached
    found = tokenizer.eos_token_id
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # a template that refuses this shape (e.g. needs a system turn): keep EOS
            text = ""
        if _PROBE in text:
            tail = text[text.rindex(_PROBE) + len(_PROBE) :]
            ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
            if ids and is_special(tokenizer, ids[0]):
                found = ids[0]
    if found is None:
        raise ValueError(
            "the tokenizer has no EOS token and its chat template ends no turn with a special token; "
            "set eos_token in the model's tokenizer_config.json"
        )
    _remember(tokenizer, _END_ATTR, int(found))
    return int(found)


def stop_ids(tokenizer) -> set[int]:
    """Every id a sampler should stop on: the end of an assistant turn and EOS."""
    ids = {end_of_turn_id(tokenizer)}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def is_special(tokenizer, token_id: int) -> bool:
    if token_id in set(tokenizer.all_special_ids):
        return True
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    token = added.get(token_id)
    return bool(token is not None and getattr(token, "special", False))


def response_tokens(completion: dict, end_ids: set[int]) -> list[int] | str:
    """What training scores for a sampled completion `{"text", "token_ids"?, "finish_reason"}`: the
    sampler's own token ids without the end token that finished them (training appends its own), or
    the text when the sampler reported no ids."""
    ids = completion.get("token_ids")
    if not ids:
        return completion["text"]
    ids = list(ids)
    if completion.get("finish_reason", "stop") != "length" and ids and ids[-1] in end_ids:
        ids = ids[:-1]
    return ids


def _remember(tokenizer, name: str, value) -> None:
    try:
        object.__setattr__(tokenizer, name, value)
    except (AttributeError, TypeError):  # a tokenizer that takes no attributes: recompute next time
        pass
