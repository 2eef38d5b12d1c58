"""vLLM's progress reaches nega's bar once per finished request, not also once per rendered prompt."""

from __future__ import annotations

import time

from nega.sampling.vllm import _forwarding_bar


def test_only_the_finished_requests_bar_is_forwarded():
    done = []
    factory = _forwarding_bar(lambda n=1: done.append(n))
    # vLLM renders the prompts through a bar of the same factory (slowly enough that tqdm redraws and
    # so updates it), then counts finished requests.
    for _ in factory(range(300), desc="Rendering prompts"):
        time.sleep(0.002)
    bar = factory(total=300, desc="Processed prompts")
    for _ in range(300):
        bar.update(1)
    bar.close()
    assert sum(done) == 300
