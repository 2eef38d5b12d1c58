"""benchmarks/quality_stepneg.py keys its cached work by the settings, nega's source and itself."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quality_stepneg  # noqa: E402


def test_cache_key_follows_settings_and_source(tmp_path, monkeypatch):
    cfg = dict(quality_stepneg.DEFAULTS)
    key = quality_stepneg.provenance(cfg)
    assert quality_stepneg.provenance(dict(cfg)) == key  # the same settings and code: the same work
    assert quality_stepneg.provenance({**cfg, "n_train": 64})["key"] != key["key"]
    # A change to any nega source file moves the key: the script reads nega/ beside benchmarks/.
    fake = tmp_path / "benchmarks" / "quality_stepneg.py"
    fake.parent.mkdir()
    fake.write_bytes(Path(quality_stepneg.__file__).read_bytes())
    (tmp_path / "nega").mkdir()
    (tmp_path / "nega" / "loss.py").write_text("def loss(): return 1\n")
    monkeypatch.setattr(quality_stepneg, "__file__", str(fake))
    before = quality_stepneg.provenance(cfg)
    (tmp_path / "nega" / "loss.py").write_text("def loss(): return 2\n")
    after = quality_stepneg.provenance(cfg)
    assert before["settings_sha256"] == after["settings_sha256"] == key["settings_sha256"]
    assert before["nega_source_sha256"] != after["nega_source_sha256"] and before["key"] != after["key"]
