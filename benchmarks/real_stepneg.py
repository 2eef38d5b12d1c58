"""Per-step negative RL beside its baselines on a real pretrained chat model: SmolLM2-135M-Instruct.

The untrained model gets 2 of 150 GSM8K and 4 of 150 SVAMP test problems right (greedy), so SFT on a
few hundred solutions would leave π_sft far below the 15-60% at which negatives carry signal. The
problems here are the toy reasoning world's (nega.toy.reasoning): multi-step word problems with small
numbers and exact answers ("start with 21, subtract 2 rows of 9, subtract 2, add 9."), several valid
solution orders, recurring error types (dropped carries, "rows of" read as a sum), an exact verifier of
the answer and of every step, and validation and test problems disjoint from the training ones by a hash
of the question. Positives for SFT are the world's gold solutions.

The benchmark is quality_stepneg.py's, run with the real model (`--model`): the same recipes
(`toy-sft`, `toy-stepneg`, with overrides), the same arms, selection rule and targets, except that the
SFT arms are sft_1x (π_sft) and sft_2x, and the target is stepneg_dpo >= sft_2x:

    start, pi_sft, sft_1x, sft_2x, rft, outcome_dpo, stepneg_dpo, stepneg_awr

Writes benchmarks/results/real_stepneg.json (accuracy with a 95% Wilson interval over the test answers,
the first-pit precision and recall against the world's true first wrong step, seconds per arm).
Sized for a 2-core CPU, where SFT runs at ~17 s per optimizer step of 16 solutions: two learning rates,
1e-4 and 3e-4, each arm keeping the one with the better validation accuracy (π_sft is sft_1x at its
chosen rate), 4 negatives per problem and one rollout group: about 1.6 h per rate measured. The design
(DESIGN: grid, seeds, sizes) is declared below; arguments after the script's name go to
quality_stepneg.py, replace the design's values (`--override` and `--rl-override` add to them) and are
recorded as departures from it:

    .venv/bin/python benchmarks/real_stepneg.py [--seeds 0] [--lrs 1e-4 3e-4] [--n-train 128]
    # quick check: --n-train 8 --n-test 8 --n-val 8 --lrs 3e-4 --rl-steps 2 --work /tmp/real_stepneg_quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import quality_stepneg

DESIGN = {
    **quality_stepneg.DESIGN,
    "model": "smollm2-135m-instruct",
    "name": "real_stepneg",
    "seeds": [0],
    "lrs": [1e-4, 3e-4],
    "rl_override": ["stepneg.negatives=4", "stepneg.rollout_groups=1"],
    "n_train": 128,
    "sft_multiples": [1, 2],
    "sft_target": "sft_2x",
    "n_test": 300,
    "n_val": 150,
    "work": str(Path(__file__).parent / "work" / "real_stepneg"),
    "out": str(Path(__file__).parent / "results" / "real_stepneg.json"),
}

if __name__ == "__main__":
    quality_stepneg.main(sys.argv[1:], design=DESIGN)
