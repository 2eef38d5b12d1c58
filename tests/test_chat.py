"""The tokens around a response: BOS of plain models, the chat template's end of turn, sampled ids."""

from __future__ import annotations

import pytest

from nega.chat import encode_prompt, end_of_turn_id, response_tokens, stop_ids
from nega.logps import encode_pair

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tokenizer(*, template: str | None, adds_bos: bool):
    """A small byte-level BPE tokenizer whose EOS is `</s>` and which knows ChatML's turn tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        ["hello there user assistant system", "what is two plus two"] * 5, trainer=trainer
    )
    if adds_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if template:
        fast.chat_template = template
    return fast


def test_end_of_turn_is_the_templates_turn_token_not_eos():
    tok = _tokenizer(template=CHATML, adds_bos=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    assert end_of_turn_id(tok) == im_end
    assert stop_ids(tok) == {im_end, tok.eos_token_id}
    ids, prompt_len = encode_pair(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "hello")
    assert ids[-1] == im_end and tok.eos_token_id not in ids[prompt_len:]


def test_a_template_ending_turns_with_plain_text_falls_back_to_eos():
    tok = _tokenizer(template="{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}", adds_bos=False)
    assert end_of_turn_id(tok) == tok.eos_token_id


def test_plain_model_prompt_gets_its_bos_once():
    tok = _tokenizer(template=None, adds_bos=True)
    bos = tok.bos_token_id
    ids = encode_prompt(tok, "User: hello\nAssistant:")
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids[1:] == tok("User: hello\nAssistant:", add_special_tokens=False)["input_ids"]
    assert encode_prompt(tok, "<s>hello").count(bos) == 1  # already there: not doubled
    pair, prompt_len = encode_pair(tok, "User: hello\nAssistant:", " hello")
    assert pair[0] == bos and prompt_len == len(ids)


def test_a_tokenizer_without_default_bos_gets_none():
    tok = _tokenizer(template=CHATML, adds_bos=False)
    assert tok.bos_token_id not in encode_prompt(tok, "<|im_start|>user\nhi<|im_end|>\n")


def test_sampled_ids_are_scored_as_sampled():
    tok = _tokenizer(template=CHATML, adds_bos=False)
    end = end_of_turn_id(tok)
    # Ids the tokenizer would not produce from the decoded text: "hello" letter by letter, not merged.
    sampled = [tok.convert_tokens_to_ids(c) for c in "hello"] + [end]
    row = {"text": tok.decode(sampled[:-1]), "token_ids": sampled, "finish_reason": "stop"}
    assert tok(row["text"], add_special_tokens=False)["input_ids"] != sampled[:-1]  # text would not do
    tokens = response_tokens(row, stop_ids(tok))
    assert tokens == sampled[:-1]
    ids, prompt_len = encode_pair(tok, "<|im_start|>assistant\n", tokens)
    assert ids[prompt_len:] == sampled
    cut = response_tokens({**row, "finish_reason": "length"}, stop_ids(tok))
    assert cut == sampled  # a cut sample keeps every id; its last is not an end token it chose


@pytest.mark.parametrize("adds_bos", [False, True])
def test_samplers_tokenize_prompts_like_training(adds_bos):
    from nega.sampling.base import prompt_token_ids, render_prompt

    tok = _tokenizer(template=None, adds_bos=adds_bos)
    messages = [{"role": "user", "content": "hello there"}]

    assert prompt_token_ids(tok, [messages]) == [encode_prompt(tok, render_prompt(tok, messages))]
