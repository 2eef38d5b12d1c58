"""The student's two tasks from one question x, told apart by a prefix in the user turn (distilling
step-by-step's multi-task setup, with a chat prompt instead of T5's encoder input)::

    predict prompt  [{"role": "user", "content": "predict: " + x}]  -> response: the label
    explain prompt  [{"role": "user", "content": "explain: " + x}]  -> response: a rationale
"""

from __future__ import annotations

PREDICT_PREFIX = "predict: "
EXPLAIN_PREFIX = "explain: "


def predict_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": PREDICT_PREFIX + question}]


def explain_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": EXPLAIN_PREFIX + question}]
