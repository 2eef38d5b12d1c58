"""Synthetic worlds with exact oracles, and a factory for tiny models trained on them.

Everything here runs offline on a CPU in seconds to minutes; demos, tests and benchmarks start here.
`make_world(name, seed, **options)` gives a world; `nega.toy.build.build_toy_model` trains its model.
"""

from nega.toy.base import World
from nega.toy.worlds import RECOMMENDED_BUILD, WORLDS, make_world, world_options

__all__ = ["RECOMMENDED_BUILD", "WORLDS", "World", "make_world", "world_options"]
