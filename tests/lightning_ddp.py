"""``python tests/lightning_ddp.py OUT``: SparsityCallback under Lightning ``strategy="ddp"``, 2 CPU processes.

Run by tests/test_lightning.py (Lightning's launcher re-runs this script for rank 1). The
process group's timeout (150 s) covers a slow start of rank 1 on a loaded machine (importing
Lightning takes tens of seconds there) and ends a hang before the test's own deadline. Writes
the probe data, the model before training and after each epoch (rank 0) and each rank's History.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy

from tests.test_lightning import Net, data, loader
from tests.test_lightning import trainer as make_trainer
from xaisparse.integrations.lightning import SparsityCallback


class SaveModel(pl.Callback):
    """The model as SparsityCallback (next in the list) measures it."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _save(self, trainer: Any, pl_module: Any, epoch: int) -> None:
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), self.out / f"model_{epoch}.pt")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._save(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._save(trainer, pl_module, trainer.current_epoch + 1)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    x, y = data(25)  # odd: the ranks' probe shares differ in size (13 and 12)
    torch.manual_seed(0)
    model = Net()
    cb = SparsityCallback(train=(x, y), log_statistic=None)
    trainer = make_trainer(
        [SaveModel(out), cb],
        epochs=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=datetime.timedelta(seconds=150)),
        devices=2,
    )
    if trainer.global_rank == 0:
        torch.save((x, y), out / "data.pt")
    trainer.fit(model, loader(x, y))
    cb.history.save(out / f"history_{trainer.global_rank}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
