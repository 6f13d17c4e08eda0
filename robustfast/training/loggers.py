"""The trainer's displays and logs, as built-in callbacks: progress bar, per-epoch line, history files, TensorBoard.

None of them touches the training: the progress bar is fed by the loop (it never wraps or iterates the loader, so
it cannot draw from the loader's random generator) and reads the running statistics the trainer keeps anyway. With
or without any of them, training is bit for bit the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import RobustfastError
from .callbacks import Callback

__all__ = ["EpochLogger", "HistoryWriter", "ProgressBar", "TensorBoardLogger", "epoch_summary"]


def epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss, accuracies, the guard's FGSM/PGD accuracy, learning rate, time and images/s."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    for key, label in (("train_acc", "train acc"), ("val_acc", "val acc"), ("val_robust_acc", "val robust acc")):
        if key in record:
            parts.append(f"{label} {100 * record[key]:.1f}%")
    if "co_pgd_acc" in record:
        parts.append(f"guard FGSM/PGD {100 * record['co_fgsm_acc']:.1f}/{100 * record['co_pgd_acc']:.1f}%")
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['time']:.1f} s ({record['ips']:.0f} img/s)")
    return "  ".join(parts)


class ProgressBar(Callback):
    """A tqdm bar per epoch with loss, accuracy and images/s (rank 0; the trainer's ``progress=True``)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.epochs = 0

    def on_fit_start(self, trainer: Any, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if not trainer.is_main_process:
            return
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(total=trainer.batches_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                        dynamic_ncols=True)  # fmt: skip
        self.t0 = time.perf_counter()

    def on_batch_end(self, trainer: Any) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.update(1 / trainer.replays)
        s = trainer.running
        i = round(bar.n)
        if s["count"] and (i % 10 == 1 or i >= trainer.batches_per_epoch):
            acc = s["correct"] / s["acc_count"] if s["acc_count"] else float("nan")
            ips = s["count"] / max(time.perf_counter() - self.t0, 1e-9)
            bar.set_postfix(loss=s["loss"] / s["count"], acc=acc, ips=ips, refresh=False)

    def on_epoch_end(self) -> None:
        self.close()

    def on_rollback(self) -> None:
        self.close()

    def on_fit_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the current bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLogger(Callback):
    """Print one summary line per epoch (rank 0; the trainer's ``verbose=True``), e.g.
    ``epoch 3/30  loss 1.2  val acc 71.0%  val robust acc 40.2%  guard FGSM/PGD 43.0/41.0%  lr 0.12  9.8 s``."""

    def on_fit_start(self, trainer: Any, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        trainer.say(epoch_summary(record, self.epochs))


class HistoryWriter(Callback):
    """Write ``history.json`` and ``history.csv`` to ``log_dir`` after every epoch, rollback and at the end (rank 0;
    the trainer's ``log_dir``). Files are replaced atomically."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)

    def write(self, trainer: Any) -> None:
        """Write the files now."""
        if trainer.is_main_process:
            trainer.history.to_json(self.log_dir / "history.json")
            trainer.history.to_csv(self.log_dir / "history.csv")

    def on_epoch_end(self, trainer: Any) -> None:
        self.write(trainer)

    def on_rollback(self, trainer: Any) -> None:
        self.write(trainer)

    def on_fit_end(self, trainer: Any) -> None:
        self.write(trainer)


class TensorBoardLogger(Callback):
    """Write each epoch's numeric history values and the per-step loss to TensorBoard (rank 0 only).

    Args:
        log_dir: the event folder.
        every_steps: log the training loss every this many steps (default 50; 0 disables step logging).
    """

    def __init__(self, log_dir: str | Path, every_steps: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RobustfastError("TensorBoardLogger needs tensorboard: pip install 'robustfast[tensorboard]'") from e
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 0:
            raise RobustfastError(f"TensorBoardLogger(every_steps={every_steps!r}): must be an integer >= 0")
        self.writer = SummaryWriter(str(log_dir))
        self.every_steps = every_steps

    def on_batch_end(self, trainer: Any, step: int, loss: float) -> None:
        """Log the step loss every ``every_steps`` steps."""
        if trainer.is_main_process and self.every_steps and step % self.every_steps == 0:
            self.writer.add_scalar("train/step_loss", loss, step)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """Log every numeric value of the epoch's record."""
        if not trainer.is_main_process:
            return
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                self.writer.add_scalar(k, v, epoch)
        self.writer.flush()

    def on_fit_end(self) -> None:
        """Close the writer."""
        self.writer.close()
