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
