"""Mutation check of nega's fast tests: does some test fail when a loss, a stage hash, the data or the
evaluation is deliberately broken?

Each mutant is a (file, exact old snippet, new snippet) triple with the fast test files that should
notice it. The repository is copied once to a temporary folder; each mutant is applied to that copy,
its tests run there (`pytest -x -m "not slow"`, with the copy first on PYTHONPATH), and the file is put
back. The repository itself is never edited. A mutant is

    killed    its tests failed (or could not be collected)
    survived  its tests passed: a bug of that kind goes unnoticed
    timeout   its tests ran past --timeout (often a mutant that falls into a long loop; counted killed)
    stale     its old snippet no longer occurs exactly once in the file: update the table

Before the mutants, the union of their tests runs once unmutated (skip with --no-baseline): a test that
already fails would make every mutant look killed.

    make mutate                                   # every mutant (hours on a CPU)
    make mutate MUTATE_ARGS="--only d2o-alpha-beta-swapped,hash-drops-lora"
    python tests/mutate.py --list                 # the table, nothing run
    python tests/mutate.py --kind loss --limit 5 --json runs/mutate.json

Results: a table on stdout and JSON (--json, default runs/mutate.json) with each mutant's status,
seconds and the tail of its test output, and the share of mutants killed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info",
    "build", "dist", "work",
)  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str  # loss | stage | data | eval | sampling
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files or node ids


REF = "tests/test_flow_reference_logps.py"
HASH = "tests/test_flow_stage_hash.py"
KEYS = "tests/test_flow_method_keys.py"
HARM = "tests/test_flow_harm_rows.py"

MUTANTS = [
    # --- losses ---------------------------------------------------------------------------------------
    Mutant("dpo-chosen-rejected-swapped", "loss", "nega/losses.py",
           "logits = beta * (chosen - rejected)", "logits = beta * (rejected - chosen)",
           ("tests/test_losses.py", "tests/align/stepneg/test_stepneg_loss.py")),
    Mutant("dpo-sum-not-mean", "loss", "nega/losses.py",
           "loss = -F.logsigmoid(logits).mean()", "loss = -F.logsigmoid(logits).sum()",
           ("tests/test_losses.py", "tests/align/stepneg/test_stepneg_loss.py")),
    Mutant("d2o-loss-alpha-beta-swapped", "loss", "nega/align/d2o/loss.py",
           "logits = beta * self_term - alpha * neg_ratio", "logits = alpha * self_term - beta * neg_ratio",
           ("tests/align/d2o/test_loss.py", REF)),
    Mutant("d2o-self-term-summed", "loss", "nega/align/d2o/loss.py",
           "self_term = self_ratio.sum(-1) / k", "self_term = self_ratio.sum(-1)",
           ("tests/align/d2o/test_loss.py", REF)),
    Mutant("d2o-alpha-beta-swapped", "loss", "nega/align/d2o/trainer.py",
           "        alpha=alpha,\n        beta=beta,\n    )\n\n\ndef dpo_self_objective",
           "        alpha=beta,\n        beta=alpha,\n    )\n\n\ndef dpo_self_objective",
           ("tests/align/d2o/test_trainer.py", REF)),
    Mutant("kto-kl-not-clamped", "loss", "nega/align/d2o/loss.py",
           "kl = (policy_kl_logps - ref_kl_logps).mean().clamp_min(0).detach()",
           "kl = (policy_kl_logps - ref_kl_logps).mean().detach()",
           ("tests/align/d2o/test_loss.py",)),
    Mutant("awr-clip-doubled", "loss", "nega/align/stepneg/loss.py",
           "return weights.clamp(max=clip).masked_fill", "return weights.clamp(max=2 * clip).masked_fill",
           ("tests/align/stepneg/test_stepneg_loss.py",)),
    Mutant("awr-beta-multiplies", "loss", "nega/align/stepneg/loss.py",
           "scaled = (advantages.detach() / beta)", "scaled = (advantages.detach() * beta)",
           ("tests/align/stepneg/test_stepneg_loss.py",)),
    Mutant("stepneg-awr-clip-default", "loss", "nega/align/stepneg/trainer.py",
           "awr_clip=recipe.stepneg.awr_clip,", "awr_clip=20.0,",
           ("tests/align/stepneg/test_stepneg_trainer.py", f"{KEYS}::test_a_recipe_value_reaches_the_loss")),
    Mutant("qcrd-hinge-reversed", "loss", "nega/distill/qcrd/loss.py",
           "hinge = torch.relu(delta - hard_neg_ce) * has_neg", "hinge = torch.relu(hard_neg_ce - delta) * has_neg",
           ("tests/distill/qcrd/test_qcrd_loss.py",)),
    Mutant("qcrd-negative-weight-flipped", "loss", "nega/distill/qcrd/loss.py",
           "neg_term = (1.0 - s_neg) * hinge", "neg_term = s_neg * hinge",
           ("tests/distill/qcrd/test_qcrd_loss.py",)),
    Mutant("qcrd-alpha3-not-decayed", "loss", "nega/distill/qcrd/trainer.py",
           '"alpha3": alpha3_at(period, qcrd_cfg.alpha3, qcrd_cfg.alpha3_decay)', '"alpha3": qcrd_cfg.alpha3',
           ("tests/distill/qcrd/test_qcrd_trainer.py", f"{KEYS}::test_a_recipe_value_reaches_the_loss")),
    Mutant("qcrd-alpha1-default", "loss", "nega/distill/qcrd/trainer.py",
           '"alpha1": qcrd_cfg.alpha1,', '"alpha1": 0.5,',
           (f"{KEYS}::test_a_recipe_value_reaches_the_loss",)),
    Mutant("step-by-step-weights-swapped", "loss", "nega/distill/qcrd/loss.py",
           "loss = (alpha * label_ce + (1.0 - alpha) * rationale_ce).mean()",
           "loss = ((1.0 - alpha) * label_ce + alpha * rationale_ce).mean()",
           ("tests/distill/qcrd/test_qcrd_loss.py",)),
    # --- stages: what a stage's hash covers -------------------------------------------------------------
    Mutant("hash-drops-lora", "stage", "nega/training.py",
           '"lora": recipe.lora.model_dump(), **config}', "**config}", (HASH,)),
    Mutant("max-grad-norm-bookkeeping", "stage", "nega/config/schema.py",
           '"report_to", "gradient_checkpointing"})', '"report_to", "gradient_checkpointing", "max_grad_norm"})',
           (HASH,)),
    Mutant("checkpointing-hashed", "stage", "nega/config/schema.py",
           '"report_to", "gradient_checkpointing"})', '"report_to"})', (HASH,)),
    Mutant("stage-hash-ignores-config", "stage", "nega/pipeline.py",
           'stage_hash = hash_value({"name": name, "config": config, "inputs": keys})',
           'stage_hash = hash_value({"name": name, "inputs": keys})',
           ("tests/test_pipeline.py",)),
    Mutant("stage-input-ignores-upstream-files", "stage", "nega/pipeline.py",
           '"files": item.manifest.get("files")}', '"files": None}', ("tests/test_pipeline.py",)),
    Mutant("d2o-train-hash-drops-beta", "stage", "nega/align/d2o/config.py",
           'frozenset({"compare", "eval_samples", "eval_temperature"})',
           'frozenset({"compare", "eval_samples", "eval_temperature", "beta"})', (HASH,)),
    Mutant("qcrd-train-hash-drops-section", "stage", "nega/distill/qcrd/run.py",
           '"qcrd": recipe.qcrd.stage_key()}', '"qcrd": recipe.qcrd.model_dump(include={"alpha1"})}', (HASH,)),
    Mutant("section-hash-drops-everything", "stage", "nega/bounds.py",
           "return self.model_dump(exclude=self.BOOKKEEPING_FIELDS)", "return {}", (HASH,)),
    Mutant("lock-not-taken", "stage", "nega/pipeline.py",
           "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "        pass",
           ("tests/test_models.py",)),
    # --- data construction ------------------------------------------------------------------------------
    Mutant("no-end-token", "data", "nega/logps.py",
           "    if add_eos:\n        response_ids = response_ids + [end_of_turn_id(tokenizer)]",
           "    if False:\n        response_ids = response_ids + [end_of_turn_id(tokenizer)]",
           ("tests/test_logps.py", REF)),
    Mutant("response-mask-unshifted", "data", "nega/logps.py",
           "targets = input_ids.masked_fill(~mask.bool(), -1)[:, 1:]",
           "targets = input_ids[:, 1:].masked_fill(~mask.bool()[:, :-1], -1)",
           ("tests/test_logps.py", REF)),
    Mutant("d2o-negative-and-kl-pair-swapped", "data", "nega/align/d2o/data.py",
           "[(prompt, negative), (prompt, negatives[j])]", "[(prompt, negatives[j]), (prompt, negative)]",
           ("tests/align/d2o/test_data.py", REF)),
    Mutant("cut-samples-scored-with-eos", "data", "nega/align/d2o/data.py",
           'eos.append(c.get("finish_reason", "stop") != "length")', "eos.append(True)",
           ("tests/align/d2o/test_data.py", REF)),
    # --- evaluation -------------------------------------------------------------------------------------
    Mutant("refusal-rate-over-all-prompts", "eval", "nega/eval/harm.py",
           '"refusal": rate([r["refused"] for r in harmful_rows]),', '"refusal": rate([r["refused"] for r in rows]),',
           ("tests/eval/test_harm_scorers.py", HARM)),
    Mutant("harm-threshold-raised", "eval", "nega/eval/harm.py",
           "HARMFUL_THRESHOLD = 0.5", "HARMFUL_THRESHOLD = 1.5", ("tests/eval/test_harm_scorers.py", HARM)),
    Mutant("refusal-score-inverted", "eval", "nega/rewards/harm.py",
           "return [0.0 if is_refusal(c) else 1.0 for c in completions]",
           "return [1.0 if is_refusal(c) else 0.0 for c in completions]",
           ("tests/eval/test_harm_scorers.py", HARM)),
    Mutant("classifier-other-label", "eval", "nega/rewards/harm.py",
           "probs = torch.softmax(logits, dim=-1)[:, self.label_index]",
           "probs = torch.softmax(logits, dim=-1)[:, -1 - self.label_index]",
           ("tests/eval/test_harm_scorers.py", HARM)),
    # --- sampling ---------------------------------------------------------------------------------------
    Mutant("temperature-ignored", "sampling", "nega/sampling/hf.py",
           "temperature=1.0 if greedy else temperature,", "temperature=1.0,",
           ("tests/sampling/test_hf_sampler.py", "tests/sampling/test_flow_sampling.py")),
    Mutant("top-p-ignored", "sampling", "nega/sampling/hf.py",
           "top_p=1.0 if greedy else top_p,", "top_p=1.0,",
           ("tests/sampling/test_hf_sampler.py", "tests/sampling/test_flow_sampling.py")),
]  # fmt: skip


def check_table(mutants: list[Mutant], root: Path = ROOT) -> dict[str, str]:
    """Why each stale mutant cannot apply (its snippet is not in its file exactly once, or it names a
    test file that does not exist); {} when all apply."""
    problems = {}
    for m in mutants:
        path = root / m.file
        count = path.read_text(encoding="utf-8").count(m.old) if path.is_file() else -1
        if count != 1:
            problems[m.name] = f"{m.file}: old snippet found {max(count, 0)} times, needs exactly 1"
        elif m.old == m.new:
            problems[m.name] = "old and new snippets are the same"
        missing = [t for t in m.tests if not (root / t.split("::")[0]).is_file()]
        if missing:
            problems[m.name] = f"no such test file: {', '.join(missing)}"
    names = [m.name for m in mutants]
    for name in {n for n in names if names.count(n) > 1}:
        problems[name] = "two mutants share this name"
    return problems


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, int | None, float, str]:
    """(outcome, pytest's exit code, seconds, output tail) of the fast tests `tests` run in `copy`."""
    env = dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", NEGA_QUIET="1")
    env.setdefault("NEGA_DATA", str(ROOT.parent / "shared" / "data"))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", None, time.monotonic() - start, out[-2000:]
    seconds = time.monotonic() - start
    tail = (done.stdout + done.stderr)[-2000:]
    # pytest: 0 passed, 1 tests failed, 2 interrupted (e.g. a collection error the mutant caused).
    outcome = {0: "passed", 1: "failed", 2: "failed"}.get(done.returncode, "error")
    return outcome, done.returncode, seconds, tail


def copy_tree(target: Path) -> Path:
    shutil.copytree(ROOT, target, ignore=COPY_IGNORE)
    return target


def imported_from(copy: Path) -> str:
    """Where `import nega` resolves in the copy's environment (it must be the copy, not an install)."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    code = "import nega, pathlib; print(pathlib.Path(nega.__file__).resolve().parent)"
    return subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def select(args) -> list[Mutant]:
    chosen = list(MUTANTS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {m.name for m in MUTANTS}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise SystemExit(f"--only: unknown mutant(s) {', '.join(unknown)}; see --list")
        chosen = [m for m in chosen if m.name in wanted]
    if args.kind:
        chosen = [m for m in chosen if m.kind in args.kind.split(",")]
    return chosen[: args.limit] if args.limit else chosen


def table(rows: list[dict]) -> str:
    header = f"{'mutant':38} {'kind':9} {'status':9} {'seconds':>8}  tests"
    lines = [header, "-" * len(header)]
    for r in rows:
        seconds = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"
        lines.append(f"{r['name']:38} {r['kind']:9} {r['status']:9} {seconds:>8}  {' '.join(r['tests'])}")
    return "\n".join(lines)


def summarize(rows: list[dict]) -> dict:
    counted = [r for r in rows if r["status"] in ("killed", "survived", "timeout")]
    killed = sum(r["status"] in ("killed", "timeout") for r in counted)
    return {
        "mutants": len(rows),
        "killed": sum(r["status"] == "killed" for r in rows),
        "timeout": sum(r["status"] == "timeout" for r in rows),
        "survived": [r["name"] for r in rows if r["status"] == "survived"],
        "not_run": [r["name"] for r in rows if r["status"] not in ("killed", "survived", "timeout")],
        "killed_share": round(killed / len(counted), 4) if counted else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--kind", help="comma-separated kinds: loss, stage, data, eval, sampling")
    parser.add_argument("--limit", type=int, help="at most this many mutants (in table order)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    parser.add_argument("--json", type=Path, default=Path("runs/mutate.json"), help="where the results go")
    args = parser.parse_args(argv)

    stale = check_table(MUTANTS)
    chosen = select(args)
    if args.list:
        for m in chosen:
            note = f"  STALE: {stale[m.name]}" if m.name in stale else ""
            print(f"{m.name:38} {m.kind:9} {m.file}{note}")
        return 0
    if not chosen:
        print("no mutant selected", file=sys.stderr)
        return 2

    rows = []
    with tempfile.TemporaryDirectory(prefix="nega-mutate-") as tmp:
        copy = copy_tree(Path(tmp) / "tree")
        where = imported_from(copy)
        if Path(where) != (copy / "nega").resolve():
            print(
                f"`import nega` resolves to {where}, not the copy; mutants would not be tested",
                file=sys.stderr,
            )
            return 2
        runnable = [m for m in chosen if m.name not in stale]
        if runnable and not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in runnable for t in m.tests))
            print(f"baseline: {len(tests)} test files unmutated ...", file=sys.stderr, flush=True)
            outcome, code, seconds, tail = run_tests(copy, tests, args.timeout * 2)
            if outcome != "passed":
                print(f"baseline {outcome} (exit {code}) in {seconds:.0f} s; fix the tests first:\n{tail}",
                      file=sys.stderr)  # fmt: skip
                return 1
            print(f"baseline passed in {seconds:.0f} s", file=sys.stderr)
        for number, m in enumerate(chosen, 1):
            row = {**asdict(m), "tests": list(m.tests), "status": "stale", "seconds": None, "exit_code": None}
            if m.name in stale:
                row["problem"] = stale[m.name]
            else:
                path = copy / m.file
                original = path.read_text(encoding="utf-8")
                path.write_text(original.replace(m.old, m.new, 1), encoding="utf-8")
                try:
                    outcome, code, seconds, tail = run_tests(copy, m.tests, args.timeout)
                finally:
                    path.write_text(original, encoding="utf-8")
                status = {"failed": "killed", "passed": "survived"}.get(outcome, outcome)
                row.update(status=status, seconds=round(seconds, 1), exit_code=code, output_tail=tail)
            rows.append(row)
            print(f"[{number}/{len(chosen)}] {m.name}: {row['status']}", file=sys.stderr, flush=True)

    result = {"summary": summarize(rows), "mutants": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(rows))
    s = result["summary"]
    share = "n/a" if s["killed_share"] is None else f"{s['killed_share']:.0%}"
    print(f"\nkilled {s['killed'] + s['timeout']} of {s['mutants']} ({share}); results in {args.json}")
    if s["survived"]:
        print("survived: " + ", ".join(s["survived"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
