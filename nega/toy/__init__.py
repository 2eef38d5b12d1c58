"""Synthetic worlds with exact oracles, and a factory for tiny models trained on them.

Everything here runs offline on a CPU in seconds to minutes; demos, tests and benchmarks start here.
"""
