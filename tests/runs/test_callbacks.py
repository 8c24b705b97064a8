"""Run records: peak memory read before Lightning's teardown moves the module back to the CPU."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from lora_sam.runs.callbacks import PeakMemory


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.moves: list[str] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def _apply(self, fn, recurse=True):  # every .to() / .cpu() of the module, in order
        self.moves.append("move")
        return super()._apply(fn, recurse)


def test_peak_memory_is_read_before_teardown_and_records_the_training_device() -> None:
    """Lightning's order is on_train_end, teardown (the strategy moves the module to the CPU), on_fit_end:
    reading the CUDA peak at on_fit_end read it with the module on the CPU. Here the read must come
    before the last move of the module."""
    order: list[str] = []

    class Spy(PeakMemory):
        def on_train_end(self, trainer, pl_module):
            super().on_train_end(trainer, pl_module)
            order.append(f"read after {len(pl_module.moves)} moves")

    module = Tiny()
    memory = Spy()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[memory])
    trainer.fit(module, data)
    assert order == [f"read after {len(module.moves) - 1} moves"]  # the teardown's .cpu() came after the read
    assert memory.result["device"] == "cpu"
    assert memory.result["peak_bytes"] is not None and memory.result["peak_bytes"] >= memory.result["start_bytes"]


def test_the_progress_bar_counts_epochs_from_max_steps() -> None:
    """Lightning's rich bar read "Epoch 6/-2" when max_steps ends the run (max_epochs -1): ours counts the
    last epoch from the steps (10 steps of 4 batches: epochs 0..2), or from max_epochs when that ends first."""
    from types import SimpleNamespace

    from lora_sam.runs.callbacks import last_epoch

    def trainer(max_epochs, max_steps, batches=4, accumulate=1):
        return SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, num_training_batches=batches,
                               accumulate_grad_batches=accumulate)

    assert last_epoch(trainer(-1, 10)) == 2
    assert last_epoch(trainer(None, 8)) == 1
    assert last_epoch(trainer(2, 100)) == 1
    assert last_epoch(trainer(-1, 10, accumulate=2)) == 4
    assert last_epoch(trainer(-1, -1)) is None


class _Recorder(pl.Callback):
    """Each validation's monitored value and a copy of the trainable weights then (the reference)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict[str, torch.Tensor]]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seen.append((float(trainer.callback_metrics["val/miou"]),
                              {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}))


def test_keep_best_ends_with_the_weights_of_the_best_validation(tmp_path, tiny_checkpoint, synthetic_root) -> None:
    """A validation at step 0 and every 2 steps; after training the module holds the weights recorded at the
    validation with the highest val/miou, which the exported adapter then has."""
    from lora_sam import LoRASAM, get_loaders
    from lora_sam.lora.adapter import load_adapter
    from lora_sam.runs.callbacks import KeepBest

    model = LoRASAM(4, 4, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=(64, 96), masks_per_image=4,
                    iterations=2, lr=0.05, warmup_steps=0)  # a large lr: the curve moves, up or down
    train, val = get_loaders(synthetic_root, image_size=(64, 96), batch_size=1, num_workers=0, masks_per_image=4,
                             val_fraction=0.3)
    recorder = _Recorder()
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, val_check_interval=2, check_val_every_n_epoch=None,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[KeepBest(), recorder],
                         default_root_dir=tmp_path)
    trainer.validate(model, val, verbose=False)  # step 0, as lora-sam fit does
    trainer.fit(model, train, val)
    assert len(recorder.seen) >= 3
    best = max(range(len(recorder.seen)), key=lambda i: recorder.seen[i][0])
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), recorder.seen[best][1][name]), name
    exported = tmp_path / "adapter.safetensors"
    fresh = LoRASAM(4, 4, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=(64, 96))
    load_adapter(fresh.sam, exported)
    for name, param in fresh.sam.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, recorder.seen[best][1][f"sam.{name}"]), name
