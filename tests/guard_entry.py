"""A training function run on every rank by tests/test_gpu.py's distributed test (importable by the
launched ranks): ZeRO-3 loading through nega's training path, then a non-finite loss on one rank only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def nan_on_one_rank(model_dir: str, out_dir: str, bad_rank: int = 1, bad_step: int = 1) -> None:
    """Load the policy the way `nega.training.train_on_rank` does under ZeRO-3, record how much of one
    base weight this rank holds, then train until rank `bad_rank` meets a NaN loss at step `bad_step`;
    every rank writes `rank<R>.json` with what it saw and how training ended."""
    from distributed_entry import PairsDataset, training_pairs

    from nega.config import LoraConfig, ModelConfig, TrainConfig
    from nega.logps import collate_sequences, encode_pair
    from nega.models import load_policy
    from nega.trainer import MethodTrainer
    from nega.training import NonFiniteLossError, partitioned_loading, training_arguments

    rank = int(os.environ.get("RANK", "0"))
    out = Path(out_dir)
    cfg = TrainConfig(lr=1e-2, batch_size=2, max_steps=4, logging_steps=1, warmup_ratio=0.0,
                      lr_scheduler="constant", deepspeed={"stage": 3}, save_steps=1)  # fmt: skip
    loading = partitioned_loading(cfg, out / "checkpoints", seed=0)
    model, tok = load_policy(
        model_dir, ModelConfig(name=model_dir), LoraConfig(r=4, alpha=8, dropout=0.0), seed=0
    )
    weight = model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight
    record = {
        "partitioned": hasattr(weight, "ds_id"),
        "local_numel": weight.numel(),
        "full_numel": int(getattr(weight, "ds_numel", weight.numel())),
    }
    del loading
    encoded = [encode_pair(tok, p, r) for p, r in training_pairs(tok)]

    def collate(rows):
        ids, attn, resp = collate_sequences([r["encoded"] for r in rows], tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": attn, "response_mask": resp,
                "row_index": torch.tensor([r["row_index"] for r in rows])}  # fmt: skip

    class CE(MethodTrainer):
        def loss_and_metrics(self, model, inputs):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[
                :, :-1
            ]
            labels = inputs["input_ids"][:, 1:]
            mask = inputs["response_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
            loss = ((nll * mask).sum(-1) / mask.sum(-1)).mean()
            if rank == bad_rank and self.state.global_step == bad_step:
                loss = loss * float("nan")
            return loss, {}

    args = training_arguments(cfg, out / "checkpoints", seed=0)
    trainer = CE(model=model, args=args, train_dataset=PairsDataset(encoded), data_collator=collate)
    try:
        trainer.train()
        record["ended"] = "finished"
    except NonFiniteLossError as exc:
        record["ended"] = str(exc)
    record["global_step"] = trainer.state.global_step
    (out / f"rank{rank}.json").write_text(json.dumps(record))
