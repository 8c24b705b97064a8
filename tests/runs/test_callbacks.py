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
