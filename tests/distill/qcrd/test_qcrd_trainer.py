"""QCRD trainer: two training steps on a tiny model, the run-wide LR schedule, the optimizer carried from
one period to the next, the period's hinge statistics, α3 per period."""

from __future__ import annotations

import pytest
import torch

from nega.distill.qcrd.trainer import OBJECTIVES, QCRDTrainer, loss_weights, steps_per_epoch

LINES = [
    "predict: is the zib heavier than the mok? yes",
    "explain: is the zib heavier than the mok? the zib weighs 7. the mok weighs 3. 7 is more than 3. answer: yes",
    "the zib weighs 2. the mok weighs 9. 2 is less than 9. answer: no",
]


def test_loss_weights_decay_alpha3_once_per_period():
    from nega.distill.qcrd.config import QCRDConfig

    cfg = QCRDConfig()
    assert loss_weights(cfg, 0)["alpha3"] == pytest.approx(0.5)
    assert loss_weights(cfg, 1)["alpha3"] == pytest.approx(0.45)
    assert loss_weights(cfg, 3)["alpha3"] == pytest.approx(0.5 * 0.9**3)
    assert loss_weights(cfg, 3)["alpha1"] == 0.5 and loss_weights(cfg, 3)["delta"] == 3.0


def test_objective_table_needs():
    assert {k: (v[1], v[2]) for k, v in OBJECTIVES.items()} == {
        "qcrd": (True, True),
        "qcrd_no_disc": (True, True),
        "step_by_step": (True, False),
        "label_only": (False, False),
    }


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from nega.toy.model import build_model, build_tokenizer, save_model

    tokenizer = build_tokenizer(LINES * 10, vocab_size=300)
    return save_model(
        build_model(tokenizer, size="tiny", seed=0), tokenizer, tmp_path_factory.mktemp("qcrd") / "m"
    )


def examples():
    return [
        {
            "id": str(i),
            "question": f"is the zib heavier than the mok? {i}",
            "label": "yes" if i % 2 else "no",
            "positives": ["the zib weighs 7. the mok weighs 3. 7 is more than 3. answer: yes"] * (1 + i % 2),
            "negatives": ["the zib weighs 2. answer: no"],
            "pos_scores": [0.8] * (1 + i % 2),
            "neg_scores": [0.1],
        }
        for i in range(8)
    ]


def build_trainer(model_path, tmp_path, objective="qcrd", **kwargs):
    from nega.config import LoraConfig, ModelConfig, TrainConfig
    from nega.distill.qcrd.config import QCRDConfig
    from nega.distill.qcrd.data import MultiTaskCollator
    from nega.models import load_policy
    from nega.training import training_arguments

    model, tokenizer = load_policy(
        model_path, ModelConfig(name=str(model_path)), LoraConfig(r=4, alpha=8, dropout=0.0), seed=0
    )
    train = TrainConfig(lr=1e-2, batch_size=4, max_steps=2, warmup_ratio=0.0, logging_steps=1, save_steps=100)
    args = training_arguments(train, tmp_path / "out", seed=0, **kwargs.pop("args", {}))
    _, rationales, negatives = OBJECTIVES[objective]
    trainer = QCRDTrainer(
        model=model,
        args=args,
        train_dataset=examples(),
        data_collator=MultiTaskCollator(tokenizer, rationales=rationales, negatives=negatives),
        objective=objective,
        weights=loss_weights(QCRDConfig(), 0),
        **kwargs,
    )
    return trainer


def test_two_trainer_steps_change_lora_weights_and_not_the_base(tiny_student, tmp_path):
    trainer = build_trainer(tiny_student, tmp_path)
    model = trainer.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [n for n, p in model.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    for name, param in model.named_parameters():
        if name in base:
            assert torch.equal(param, base[name]), name
    logged = [h for h in trainer.state.log_history if "qcrd/label_ce" in h]
    assert logged and all(0 < h["qcrd/label_ce"] for h in logged)
    assert all(0.0 <= h["qcrd/hinge_active"] <= 1.0 and h["qcrd/s_pos"] == pytest.approx(0.8) for h in logged)


def test_period_scheduler_continues_the_run_wide_schedule(tiny_student, tmp_path):
    # 3 periods of 2 steps, linear decay, no warmup: period 1 starts at 1 - 2/6 of the peak LR
    trainer = build_trainer(
        tiny_student, tmp_path, schedule_offset=2, schedule_total=6, args={"lr_scheduler_type": "linear"}
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - 2 / 6))
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - 3 / 6))


def test_label_only_batches_carry_no_rationales(tiny_student, tmp_path):
    trainer = build_trainer(tiny_student, tmp_path, objective="label_only")
    batch = trainer.data_collator(examples()[:3])
    assert batch["input_ids"].shape[0] == 3
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss.item() > 0


def test_steps_per_epoch_covers_every_example_once():
    from nega.config import TrainConfig

    assert steps_per_epoch(100, TrainConfig(batch_size=8, grad_accum=2)) == 7
    assert steps_per_epoch(100, TrainConfig(batch_size=8, max_steps=3)) == 3
    assert steps_per_epoch(100, TrainConfig(batch_size=8), world_size=2) == 7


def test_checkpoints_ride_on_the_base_with_lora_and_stand_alone_without():
    from nega.config import LoraConfig
    from nega.distill.qcrd.trainer import sampling_target
    from nega.training import trained_folder_name

    lora, full = LoraConfig(), LoraConfig(enabled=False)
    assert trained_folder_name(lora) == "adapter" and trained_folder_name(full) == "model"
    assert sampling_target("base", None, lora) == ("base", None)
    assert sampling_target("base", "run/e0/adapter", lora) == ("base", "run/e0/adapter")
    assert sampling_target("base", None, full) == ("base", None)
    assert sampling_target("base", "run/e0/model", full) == ("run/e0/model", None)


def test_a_period_continues_the_previous_periods_optimizer_and_reports_its_hinge(tiny_student, tmp_path):
    first = build_trainer(tiny_student, tmp_path / "a")
    first.train()
    saved = first.save_optimizer_state(tmp_path / "a")
    moments = [s["exp_avg"].clone() for s in first.optimizer.state_dict()["state"].values()]
    assert saved is not None and moments and any(m.abs().max() > 0 for m in moments)
    # Rows with a negative: all 8; the hinge is active where δ − CE(r⁻) > 0, and the tiny model's CEs
    # of the short negative lie near log(vocab) ≈ 5.7 > δ = 3, so few or none are active.
    stats = first.period_statistics()
    assert first.negative_totals["rows"] == 8.0
    assert 0.0 <= stats["hinge_active"] <= 1.0 and stats["hard_negative_ce"] > 0
    # Rows trained in the dataset's order, not reshuffled: the schedule already chose them.
    assert isinstance(first._get_train_sampler(), torch.utils.data.SequentialSampler)

    carried = build_trainer(tiny_student, tmp_path / "b", optimizer_state=str(saved))
    carried.create_optimizer()
    loaded = [s["exp_avg"] for s in carried.optimizer.state_dict()["state"].values()]
    assert len(loaded) == len(moments) and all(
        torch.equal(a, b) for a, b in zip(loaded, moments, strict=True)
    )
    fresh = build_trainer(tiny_student, tmp_path / "c")
    fresh.create_optimizer()
    assert not fresh.optimizer.state_dict()["state"]


def test_objectives_without_negatives_report_no_hinge(tiny_student, tmp_path):
    trainer = build_trainer(tiny_student, tmp_path, objective="step_by_step")
    trainer.train()
    assert trainer.period_statistics() == {}


def test_the_optimizer_state_round_trips_through_safetensors(tmp_path):
    import torch

    from nega.distill.qcrd.trainer import load_optimizer_state, write_optimizer_state

    weights = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(weights, lr=1e-3, weight_decay=0.1)
    sum((w**2).sum() for w in weights).backward()
    optimizer.step()
    write_optimizer_state(optimizer.state_dict(), tmp_path / "optimizer.safetensors")
    restored = torch.optim.AdamW(weights, lr=5.0)
    restored.load_state_dict(load_optimizer_state(tmp_path / "optimizer.safetensors"))
    saved, loaded = optimizer.state_dict(), restored.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for index, entry in saved["state"].items():
        for name, value in entry.items():
            assert torch.equal(loaded["state"][index][name], value), (index, name)
