"""Per-step negative RL data: problems, self-generated positives and negatives, pairs, batches.

A problem row, after `problem_of`::

    {"question": "start with 7, add 5, multiply by 2.", "solution": "7 + 5 = 12\\n12 * 2 = 24\\nanswer: 24",
     "answer": "24"}

(GSM8K rows give `question` and an `answer` solution ending in `#### n`; MATH rows `problem`,
`solution` and optionally `answer`. TRL's prompt-completion rows give the gold solution as
`completion`, its answer after `#### ` or in `\\boxed{}` (or an `answer` column); stepwise
supervision rows whose steps are all labelled true give theirs as the steps joined by newlines. A
conversational prompt's last user turn is the question: the chat template is applied to it anew.) Samples of π_sft are split per problem into verified-correct
positives that ended on their own (`positive_texts`: one cut at max_tokens is neither) and incorrect
negatives (`negative_texts`), each deduplicated. After the rollouts, a negative carries its steps,
values, advantages and first pit c, and becomes one training example per objective::

    per-step DPO  {"prompt": <rendered>, "chosen": y⁺, "chosen_ids": [π_sft's sampled ids of y⁺],
                   "rejected": ŷ_1..c, "rejected_eos": false, ...}
    outcome DPO   {"prompt": <rendered>, "chosen": y⁺, "rejected": ŷ (whole),  "rejected_eos": true, ...}
    AWR           {"prompt": <rendered>, "steps": [ŷ_1, ..., ŷ_L], "advantages": [A_1, ..., A_L],
                   "eos": true, "correct": false}     (right samples too: see `awr_rows`)

y⁺ is a correct π_sft solution of the same problem, spread over the problem's negatives in turn.
The per-step rejected prefix is scored **without EOS**: the model must not learn that a solution
ends at the pit. `PairCollator` and `StepCollator` turn examples into token batches.
"""

from __future__ import annotations

import random

import torch

from nega.logps import collate_sequences, encode_pair, pack_shared_prompts


def problem_of(row: dict) -> dict:
    """{"question", "solution" (or None), "answer"} from a toy, GSM8K or MATH style row."""
    from nega.data import require_text
    from nega.rewards.math import last_boxed, reference_answer, strip_calculator_annotations

    key = "question" if row.get("question") is not None else "problem"
    question = require_text(row, key)
    solution = row.get("solution")
    answer = row.get("answer")
    if isinstance(answer, str) and "####" in answer and solution is None:
        solution = strip_calculator_annotations(answer)  # GSM8K: the answer column is the solution
    if answer is None and isinstance(solution, str):
        answer = last_boxed(solution)
    if answer is None or not str(answer).strip():
        raise ValueError("no reference answer: give an 'answer' column or a solution with \\boxed{}")
    if solution is not None and (not isinstance(solution, str) or not solution.strip()):
        raise ValueError("field 'solution' is empty")
    return {"question": question, "solution": solution, "answer": reference_answer(answer)}


def _last_turn(value, key: str, role: str) -> str:
    """A column's text: the text itself, or the content of the last `role` turn of chat messages."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == role]
        if not turns:
            raise ValueError(f"field {key!r} has no {role} turn")
        value = turns[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} must be non-empty text or chat messages")
    return value


def problem_of_prompt_completion(row: dict) -> dict:
    """TRL prompt-completion row (the completion a gold solution) -> `problem_of`'s problem."""
    question = _last_turn(row["prompt"], "prompt", "user")
    solution = _last_turn(row["completion"], "completion", "assistant")
    return problem_of(_gold_row(question, solution, row.get("answer")))


def problem_of_stepwise(row: dict) -> dict:
    """TRL stepwise-supervision row -> a problem; its steps are the gold solution when all are right."""
    question = _last_turn(row["prompt"], "prompt", "user")
    steps, labels = row["completions"], row["labels"]
    if not isinstance(steps, list) or not isinstance(labels, list) or len(steps) != len(labels):
        raise ValueError("fields 'completions' and 'labels' must be lists of the same length")
    if all(label in (True, 1, "true", "True") for label in labels):
        return problem_of(_gold_row(question, "\n".join(steps), row.get("answer")))
    if row.get("answer") is None:
        raise ValueError("a step is labelled false and there is no 'answer' column: no reference answer")
    return problem_of({"question": question, "answer": row["answer"]})


def _gold_row(question: str, solution: str, answer) -> dict:
    if answer is None and "####" in solution:
        return {"question": question, "answer": solution}  # GSM8K style: the answer is the solution's end
    return {"question": question, "solution": solution, "answer": answer}


PROBLEM_READERS = {
    "problems": problem_of,
    "toy": problem_of,
    "prompt_completion": problem_of_prompt_completion,
    "stepwise_supervision": problem_of_stepwise,
}


def problem_reader(fmt: str, first_row: dict, source: str = "data"):
    """The function turning a row of format `fmt` (`auto`: detected from `first_row`) into a problem."""
    from nega.data import METHOD_FORMATS, DataError, detect_format

    if fmt == "auto":
        fmt = detect_format(list(first_row), first_row, METHOD_FORMATS["stepneg"])
        if fmt is None:
            raise DataError(
                f"{source}: cannot tell the data format from the columns of row 1 {sorted(first_row)}; set "
                f"data.format to one of {', '.join(PROBLEM_READERS)}, or map columns with data.fields"
            )
    if fmt not in PROBLEM_READERS:
        raise DataError(f"data.format {fmt!r}: per-step RL reads {', '.join(PROBLEM_READERS)}")
    return PROBLEM_READERS[fmt]


def positive_texts(row: dict) -> list[str]:
    """A sample row's distinct right solutions that ended on their own (first-seen order).

    A right solution cut at sampling.max_tokens (finish_reason "length") is not a positive: as an RFT
    target or a DPO chosen response it would be trained to end with an end token π_sft never produced
    there (docs/methods.md). Row keys: texts, correct, finish_reasons (one entry per sample).
    """
    marks = zip(row["texts"], row["correct"], row["finish_reasons"], strict=True)
    return list(dict.fromkeys(t for t, ok, reason in marks if ok and reason != "length"))


def cut_positive_count(row: dict) -> int:
    """How many of a row's right samples were cut at max_tokens (and so are not positives)."""
    return sum(
        ok and reason == "length" for ok, reason in zip(row["correct"], row["finish_reasons"], strict=True)
    )


def negative_texts(row: dict) -> list[str]:
    """A sample row's distinct non-empty wrong solutions, cut or not (first-seen order)."""
    return list(
        dict.fromkeys(t for t, ok in zip(row["texts"], row["correct"], strict=True) if not ok and t.strip())
    )


def rft_examples(prompts: list[str], samples: list[dict], tokens: dict) -> list[tuple[str, str | list[int]]]:
    """RFT's (prompt, response) pairs: every positive of every problem, as the ids π_sft sampled for it
    when known (`tokens`: (problem, text) -> ids), else its text."""
    return [(prompts[i], tokens.get((i, y), y)) for i, row in enumerate(samples) for y in positive_texts(row)]


class PositivePicker:
    """A correct solution per request, cycling through each problem's positives in a seeded order,
    so a problem's negatives are paired with different positives when it has several."""

    def __init__(self, positives: dict[int, list[str]], seed: int):
        self.order = {}
        for problem, pool in positives.items():
            pool = list(pool)
            random.Random(f"{seed}/{problem}").shuffle(pool)
            self.order[problem] = pool
        self.used: dict[int, int] = {}

    def has(self, problem: int) -> bool:
        return bool(self.order.get(problem))

    def __call__(self, problem: int) -> str:
        pool = self.order[problem]
        k = self.used.get(problem, 0)
        self.used[problem] = k + 1
        return pool[k % len(pool)]


def step_pairs(
    negatives: list[dict], prompts: list[str], positives: dict[int, list[str]], seed: int
) -> list[dict]:
    """Per-step DPO pairs: chosen y⁺, rejected = the negative's steps up to its first pit, no EOS."""
    pick = PositivePicker(positives, seed)
    rows = []
    for neg in negatives:
        if not pick.has(neg["problem"]):
            continue
        c = neg["pit"]
        rows.append(
            {
                "problem": neg["problem"],
                "prompt": prompts[neg["problem"]],
                "chosen": pick(neg["problem"]),
                "rejected": "".join(neg["steps"][:c]),
                "rejected_eos": False,
                "pit": c,
                "num_steps": len(neg["steps"]),
            }
        )
    return rows


def outcome_pairs(
    negatives: list[dict], prompts: list[str], positives: dict[int, list[str]], seed: int
) -> list[dict]:
    """Outcome-DPO pairs on the same negatives: rejected = the whole incorrect solution, with EOS when it
    ended on its own (a solution cut at max_tokens never saw one)."""
    pick = PositivePicker(positives, seed)
    rows = []
    for neg in negatives:
        if not pick.has(neg["problem"]):
            continue
        rows.append(
            {
                "problem": neg["problem"],
                "prompt": prompts[neg["problem"]],
                "chosen": pick(neg["problem"]),
                "rejected": "".join(neg["steps"]),
                "rejected_eos": neg.get("finish_reason", "stop") == "stop",
            }
        )
    return rows


def awr_rows(solutions: list[dict], prompts: list[str], positives: dict[int, list[str]]) -> list[dict]:
    """AWR examples: every step of every distinct π_sft sample, right and wrong, with its advantage.

    The advantage-weighted objective is an expectation over π_sft's samples, so a problem's right
    samples stand beside its wrong ones: at a state both reach, the right next step gets the large
    weight and the pit step the small one, which is how the objective lowers the pit's probability.
    Only problems with a right sample are used (the problems the DPO pairs use). A sample that ended
    on its own keeps its EOS, scored with its last step; a cut one has none.
    """
    rows = []
    for sol in solutions:
        if not positives.get(sol["problem"]):
            continue
        if any(a is None for a in sol["advantages"]):
            raise ValueError(
                f"a sample of problem {sol['problem']} lacks a step advantage; AWR needs every step's value "
                "(estimate the values without skip_after_pit)"
            )
        rows.append(
            {
                "problem": sol["problem"],
                "prompt": prompts[sol["problem"]],
                "steps": sol["steps"],
                "advantages": sol["advantages"],
                "eos": sol.get("finish_reason", "stop") == "stop",
                "correct": bool(sol.get("correct", False)),
            }
        )
    return rows


def step_token_index(tokenizer, steps: list[str]) -> list[int]:
    """For each token of `"".join(steps)` (tokenized alone, as `encode_pair` does), the step it starts in."""
    text = "".join(steps)
    bounds, edge = [], 0
    for step in steps:
        edge += len(step)
        bounds.append(edge)
    if not getattr(tokenizer, "is_fast", False):
        # Slow tokenizers have no offsets: a token belongs to the first prefix whose tokens include it.
        index = []
        for i in range(len(steps)):
            count = len(tokenizer("".join(steps[: i + 1]), add_special_tokens=False)["input_ids"])
            index += [i] * (count - len(index))
        total = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return (index + [len(steps) - 1] * total)[:total]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    index, step = [], 0
    for start, _ in encoded["offset_mapping"]:
        while step < len(bounds) - 1 and start >= bounds[step]:
            step += 1
        index.append(step)
    return index


class PairCollator:
    """DPO batches: chosen rows then rejected rows in one [2B, T] batch, with their reference log-probs.

    Example keys: prompt (rendered), chosen, rejected, rejected_eos, ref_chosen, ref_rejected.
    With `pack`, rows are packed by prompt (`nega.logps.pack_shared_prompts`): a problem's prompt is
    computed once for the chosen and rejected responses of all of its pairs in the batch.
    """

    def __init__(self, tokenizer, max_length: int | None = None, pack: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pack = pack

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [
            encode_pair(
                self.tokenizer,
                e["prompt"],
                e["chosen"] if e.get("chosen_ids") is None else e["chosen_ids"],
                add_eos=True,
                max_length=self.max_length,
            )
            for e in examples
        ]
        encoded += [
            encode_pair(
                self.tokenizer,
                e["prompt"],
                e["rejected"],
                add_eos=bool(e["rejected_eos"]),
                max_length=self.max_length,
            )
            for e in examples
        ]
        if self.pack:
            sequences = pack_shared_prompts(encoded, self.tokenizer.pad_token_id)
        else:
            ids, attention, response = collate_sequences(encoded, self.tokenizer.pad_token_id)
            sequences = {"input_ids": ids, "attention_mask": attention, "response_mask": response}
        return {
            **sequences,
            "ref_chosen": torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float32),
            "ref_rejected": torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float32),
        }


class StepCollator:
    """AWR batches: prompt + ŷ_1..L (+ EOS when the example's `eos` is true, tagged with the last step),
    each response token tagged with its step.

    Returns input_ids, attention_mask [B, T]; step_index [B, T] (-1 off the response); advantages and
    step_mask [B, S] with S the batch's largest step count.
    """

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        encoded, indices = [], []
        for e in examples:
            eos = bool(e.get("eos", False))
            ids, prompt_len = encode_pair(
                self.tokenizer, e["prompt"], "".join(e["steps"]), add_eos=eos, max_length=self.max_length
            )
            encoded.append((ids, prompt_len))
            index = step_token_index(self.tokenizer, e["steps"]) + [len(e["steps"]) - 1] * eos
            indices.append(index[: len(ids) - prompt_len])
        ids, attention, _ = collate_sequences(encoded, self.tokenizer.pad_token_id)
        step_index = torch.full(ids.shape, -1, dtype=torch.long)
        for row, ((_, prompt_len), index) in enumerate(zip(encoded, indices, strict=True)):
            step_index[row, prompt_len : prompt_len + len(index)] = torch.tensor(index, dtype=torch.long)
        width = max(len(e["steps"]) for e in examples)
        advantages = torch.zeros(len(examples), width)
        step_mask = torch.zeros(len(examples), width, dtype=torch.bool)
        for row, e in enumerate(examples):
            advantages[row, : len(e["advantages"])] = torch.tensor(e["advantages"], dtype=torch.float32)
            # A step cut away by max_length has no tokens left; it carries no weight.
            kept = set(indices[row])
            for s in range(len(e["steps"])):
                step_mask[row, s] = s in kept
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "step_index": step_index,
            "advantages": advantages,
            "step_mask": step_mask,
        }
