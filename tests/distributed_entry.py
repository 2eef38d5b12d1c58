"""A training function run on every rank by the distributed tests (importable by the launched ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class PairsDataset(torch.utils.data.Dataset):
    def __init__(self, encoded):
        self.encoded = encoded

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        return {"encoded": self.encoded[i], "row_index": i}


def training_pairs(tok) -> list[tuple[str, str]]:
    """(rendered prompt, response) pairs taught by `train_lora`: "a plus b is a+b+1"."""
    from nega.sampling.base import render_prompt

    pairs = [(f"what is {a} plus {b}?", f"{a} plus {b} is {a + b + 1}.") for a in range(4) for b in range(4)]
    return [(render_prompt(tok, [{"role": "user", "content": p}]), r) for p, r in pairs]


def train_lora(model_dir: str, out_dir: str, stage: int, steps: int = 4, global_batch: int = 8) -> None:
    """LoRA with response-masked CE; every rank sees global_batch / world_size rows per step."""
    from nega.config import LoraConfig, ModelConfig, TrainConfig
    from nega.logps import collate_sequences, encode_pair
    from nega.models import load_policy
    from nega.trainer import MethodTrainer
    from nega.training import train_with_resume, training_arguments

    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    model, tok = load_policy(
        model_dir, ModelConfig(name=model_dir), LoraConfig(r=4, alpha=8, dropout=0.0), seed=0
    )
    encoded = [encode_pair(tok, p, r) for p, r in training_pairs(tok)]

    def collate(rows):
        ids, attn, resp = collate_sequences([r["encoded"] for r in rows], tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}

    class CE(MethodTrainer):
        def loss_and_metrics(self, model, inputs):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[
                :, :-1
            ]
            labels = inputs["input_ids"][:, 1:]
            mask = inputs["response_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
            # Mean per sequence, then over sequences: equal per-rank batches make the rank average
            # equal to the global-batch value, so 1 and N processes can be compared step by step.
            return ((nll * mask).sum(-1) / mask.sum(-1)).mean(), {}

        def _get_train_sampler(self, *args, **kwargs):
            # Fixed order: step s sees rows [s*B, (s+1)*B) whatever the number of ranks.
            return torch.utils.data.SequentialSampler(self.train_dataset)

    cfg = TrainConfig(
        lr=1e-2,
        batch_size=global_batch // world,
        max_steps=steps,
        logging_steps=1,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        deepspeed={"stage": stage},
        save_steps=1000,
    )
    args = training_arguments(cfg, Path(out_dir), seed=0, data_seed=0)
    trainer = CE(model=model, args=args, train_dataset=PairsDataset(encoded), data_collator=collate)
    train_with_resume(trainer, Path(out_dir))
    if trainer.is_world_process_zero():
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        Path(out_dir, "losses.json").write_text(json.dumps(losses))
    trainer.save_model(str(Path(out_dir) / "adapter"))
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(Path(out_dir) / "adapter"))
    score_under_the_sharded_model(trainer, encoded, tok.pad_token_id, Path(out_dir))


def score_under_the_sharded_model(trainer, encoded, pad_id: int, out_dir: Path) -> None:
    """Summed log-probs of every pair through the wrapped (DDP / DeepSpeed-sharded) model, with the adapter
    (policy) and with it disabled (reference), plainly and packed by prompt. Every rank takes part (ZeRO-3
    gathers each layer's shards for its forward); rank 0 writes `sharded_logps.json`."""
    from nega.logps import collate_sequences, pack_shared_prompts, packed_sequence_logps, sequence_logps

    engine = trainer.model_wrapped
    engine.eval()
    device = trainer.args.device
    ids, attn, resp = (t.to(device) for t in collate_sequences(encoded, pad_id))
    packed = {k: v.to(device) for k, v in pack_shared_prompts(encoded, pad_id).items()}
    values = {}
    with torch.no_grad():
        values["policy"] = sequence_logps(engine, ids, attn, resp).tolist()
        values["policy_packed"] = packed_sequence_logps(engine, packed).tolist()
        with trainer.model.disable_adapter():
            values["reference"] = sequence_logps(engine, ids, attn, resp).tolist()
    if trainer.is_world_process_zero():
        (out_dir / "sharded_logps.json").write_text(json.dumps(values))
