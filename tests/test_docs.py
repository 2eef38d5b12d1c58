"""docs/methods.md, the methods' specification that the code cites: every cited section exists, and every
recipe key its tables name exists with the default the table states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS_DOC = ROOT / "docs" / "methods.md"
CITING = [ROOT / "README.md", *(p for d in ("nega", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py"))]
CITING += sorted((ROOT / "nega" / "recipes").glob("*.yaml"))


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors: one per heading (lower case, punctuation dropped, spaces to hyphens) and one per
    explicit `<a id="...">`."""
    found = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, flags=re.MULTILINE):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def test_every_cited_section_exists():
    known = anchors(METHODS_DOC.read_text(encoding="utf-8"))
    assert {"shared-rules", "d2o", "per-step-negative-rl", "qcrd"} <= known
    cited = {}
    for path in CITING:
        for anchor in re.findall(r"docs/methods\.md#([\w\-]+)", path.read_text(encoding="utf-8")):
            cited.setdefault(anchor, []).append(str(path.relative_to(ROOT)))
    assert cited, "nothing cites docs/methods.md"
    missing = {anchor: paths for anchor, paths in cited.items() if anchor not in known}
    assert not missing, f"cited sections missing from docs/methods.md: {missing}"


def test_nothing_cites_a_specification_outside_the_repository():
    # METHODS.md lives beside the checkout, where users never see it; the code cites docs/methods.md.
    others = [p for p in CITING if p != Path(__file__).resolve()]
    citing = [str(p.relative_to(ROOT)) for p in others if "METHODS.md" in p.read_text(encoding="utf-8")]
    assert citing == []


def section_classes() -> dict:
    from nega.align.d2o.config import D2OConfig
    from nega.align.stepneg.config import StepNegConfig
    from nega.config import SamplingConfig
    from nega.distill.qcrd.config import QCRDConfig

    return {"d2o": D2OConfig, "stepneg": StepNegConfig, "qcrd": QCRDConfig, "sampling": SamplingConfig}


def stated_default(text: str):
    """The value a table's default cell states: its first backquoted or bare token."""
    text = text.strip()
    quoted = re.match(r"`([^`]+)`", text)
    if quoted:
        token = quoted.group(1)
        return ("key", token) if re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", token) else ("value", token)
    token = text.split()[0].rstrip(":;,")
    words = {
        "none": ("empty", None),
        "null": ("value", None),
        "true": ("value", True),
        "false": ("value", False),
    }
    return words[token] if token in words else ("value", float(token))


def table_rows() -> list[tuple[list[str], list[str]]]:
    """(keys, stated defaults) of every row of a `| decision | key | default |` table."""
    rows = []
    for line in METHODS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        keys = re.findall(r"`([a-z0-9_]+\.[a-z0-9_*]+)`", cells[1])
        if not keys or any("*" in k for k in keys):
            continue
        defaults = cells[2].split(" / ")
        rows.append((keys, defaults * len(keys) if len(defaults) == 1 else defaults))
    return rows


def test_the_tables_cover_every_method_section():
    named = {key for keys, _ in table_rows() for key in keys}
    for section in ("d2o", "stepneg", "qcrd"):
        assert any(key.startswith(f"{section}.") for key in named)
    # Every field of the three sections is in a table, but QCRD's answer regex: its `|` would split a
    # table row, so the prose states it.
    for section in ("d2o", "stepneg", "qcrd"):
        fields = set(section_classes()[section].model_fields) - {"answer_pattern"}
        assert fields <= {key.split(".", 1)[1] for key in named if key.startswith(f"{section}.")}, section


@pytest.mark.parametrize(
    "keys,defaults", table_rows(), ids=lambda v: "+".join(v) if isinstance(v, list) else ""
)
def test_each_stated_default_is_the_code_default(keys, defaults):
    classes = section_classes()
    assert len(keys) == len(defaults), f"{keys}: {len(defaults)} defaults stated"
    for key, text in zip(keys, defaults, strict=True):
        section, field = key.split(".", 1)
        info = classes[section].model_fields.get(field)
        assert info is not None, f"docs/methods.md names {key}, which the recipe schema does not have"
        actual = info.get_default(call_default_factory=True)
        kind, value = stated_default(text)
        if kind == "key":  # "`train.lr`": the field is unset and falls back to that key
            assert actual is None, (key, actual)
        elif kind == "empty":
            assert actual in ([], None), (key, actual)
        elif isinstance(value, float):
            assert not isinstance(actual, bool) and float(actual) == value, (key, actual, text)
        else:
            assert actual == value, (key, actual, text)
