"""DDP (2 gloo processes on CPU) with the CO guard, per-rank method state and kill-and-resume.

* The guard takes the same decision on every rank even when the ranks measure different numbers (a threshold
  between the two ranks' values used to send rank 1 into a rollback while rank 0 waited in a collective until the
  gloo timeout), and BatchNorm statistics are one model's on every rank after each epoch.
* A 2-process run interrupted in the middle of epoch 3 and resumed is bit-identical on both ranks to the
  uninterrupted run, with per-rank generators (FGSM-PGI and GradAlign seeded by rank, as examples/05 does), a
  BatchNorm model, and a guard rollback after the resume point (to the best state saved in ``best.pt``).
* Resuming a 2-process checkpoint with one process is refused, naming the fix.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import robustfast as rf
import robustfast.evaluation.diagnostics as diag
from robustfast.data import IndexedDataset, load_digits_tensors
from robustfast.training import AdversarialTrainer, COGuard

EPOCHS = 4


class Interrupt(Exception):
    pass


def _init(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip


def _loader(rank: int = 0, world: int = 2, n: int = 256) -> DataLoader:
    xtr, ytr, _, _ = load_digits_tensors(seed=0)
    ds = IndexedDataset(TensorDataset(xtr[:n], ytr[:n]))
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    return DataLoader(ds, batch_size=32, sampler=sampler, drop_last=True)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return rf.models.create("small_cnn", num_classes=10, in_chans=1, width=8, hidden=32)  # with BatchNorm


# ------------------------------------------------------------------------------- one verdict on every rank
def _split_worker(rank: int, init_file: str, out: str) -> None:
    _init(rank, init_file)
    try:
        # each rank measures other numbers: rank 1 sees PGD accuracy fall by 0.25 at the third check, rank 0 does not;
        # alone, rank 1 would flag a sudden drop (> 0.2) and roll back while rank 0 trains on
        calls = {"n": 0}

        def scripted(model, x, y, eps, **kw):
            calls["n"] += 1
            p = 0.5 if rank == 0 or calls["n"] != 3 else 0.25
            return {"fgsm_acc": p, "pgd_acc": p, "gap": 0.0}

        diag.fgsm_pgd_gap = scripted
        xtr, ytr, _, _ = load_digits_tensors(seed=0)
        model = _model()
        guard = COGuard(xtr[300:364], ytr[300:364], on_co="rollback")
        tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), lr=0.05, co_guard=guard, val_attack=None,
                                progress=False, verbose=False)  # fmt: skip
        tr.fit(_loader(rank), 4)
        bn = {k: v for k, v in model.state_dict().items() if "running" in k}
        torch.save({"history": list(tr.history), "bn": bn, "weights": model.state_dict()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_guard_takes_one_decision_on_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "split.pt"
    mp.spawn(_split_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1))
    assert _strip(r0["history"]) == _strip(r1["history"])
    # summed counts: (16 + 8) / 64 = 0.375 at the third check, 0.125 below the best: no sudden drop on either rank
    assert [h["co_pgd_acc"] for h in r0["history"]] == [0.5, 0.5, 0.375, 0.5]
    assert not any(h["co"] for h in r0["history"])
    for k in r0["bn"]:  # one model: rank 0's BatchNorm statistics on both ranks after the last epoch
        assert torch.equal(r0["bn"][k], r1["bn"][k]), k
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k


def _strip(h: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("time", "ips")} for r in h]


# ------------------------------------------------------------------------------- exact kill-and-resume
class EpochScriptGuard(COGuard):
    """The guard's rules on scripted measurements keyed by (epoch, rollbacks so far), so an interrupted-and-resumed
    run and the uninterrupted one see the same numbers at the same points: CO at the first end of epoch 4."""

    TABLE: ClassVar[dict[tuple[int, int], float]] = {(1, 0): 0.40, (2, 0): 0.50, (3, 0): 0.45, (4, 0): 0.20}

    def __init__(self, x, y):
        super().__init__(x, y, on_co="rollback")
        self.epoch_now = 0

    def _measure(self, model, eps, device):
        p = self.TABLE.get((self.epoch_now, self.n_rollbacks), 0.48)
        return p, p

    def on_epoch_start(self, epoch):  # called as a callback (registered below)
        self.epoch_now = epoch + 1


def _method(model: torch.nn.Module, rank: int) -> dict[str, Any]:
    return {"attack": rf.FGSMPGI(model, 0.1, seed=10 + rank), "criterion": rf.PGILoss(),
            "regularizers": [rf.GradAlign(eps=0.1, lam=0.5, seed=20 + rank)]}  # fmt: skip


def _resume_worker(rank: int, init_file: str, out: str, ckpt: str, mode: str) -> None:
    _init(rank, init_file)
    try:
        torch.manual_seed(100 + rank)  # per-rank global RNG (dropout, ...): each rank must get its own back
        model = _model()
        xtr, ytr, _, _ = load_digits_tensors(seed=0)
        guard = EpochScriptGuard(xtr[300:364], ytr[300:364])

        class Crash:
            def on_batch_start(self, epoch, step):
                if mode == "crash" and epoch == 2 and step == 2 * 4 + 2:  # 4 batches per epoch: mid epoch 3
                    raise Interrupt

        tr = AdversarialTrainer(model, lr=0.05, co_guard=guard, callbacks=[guard, Crash()], checkpoint_dir=ckpt,
                                val_attack=None, progress=False, verbose=False, **_method(model, rank))  # fmt: skip
        try:
            tr.fit(_loader(rank), EPOCHS, resume=mode == "resume")
        except Interrupt:
            return
        state = {"weights": model.state_dict(), "history": _strip(list(tr.history)),
                 "memory": tr.attack.prior.data, "gradalign": tr.regularizers[0].rng.state_dict()["states"]["cpu"],
                 "global": torch.get_rng_state(), "rollbacks": guard.n_rollbacks}  # fmt: skip
        torch.save(state, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, name: str, ckpt: Path, mode: str) -> None:
    mp.spawn(_resume_worker, args=(str(tmp_path / f"init_{name}"), str(tmp_path / name), str(ckpt), mode),
             nprocs=2, join=True)  # fmt: skip


def test_two_process_run_resumes_bit_identically(tmp_path: Path) -> None:
    _spawn(tmp_path, "ref", tmp_path / "ref_ckpt", "plain")
    _spawn(tmp_path, "crash", tmp_path / "ckpt", "crash")
    saved = rf.training.load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert saved["epoch"] == 2 and saved["world_size"] == 2 and len(saved["ranks"]) == 2
    assert (tmp_path / "ckpt" / "best.pt").is_file()
    _spawn(tmp_path, "res", tmp_path / "ckpt", "resume")
    for rank in (0, 1):
        ref = torch.load(f"{tmp_path / 'ref'}.{rank}", weights_only=True)
        res = torch.load(f"{tmp_path / 'res'}.{rank}", weights_only=True)
        assert ref["rollbacks"] == res["rollbacks"] == 1  # CO at epoch 4, after the resume point
        assert ref["history"] == res["history"]
        for k in ref["weights"]:
            assert torch.equal(ref["weights"][k], res["weights"][k]), (rank, k)
        for k in ("memory", "gradalign", "global"):
            assert torch.equal(ref[k], res[k]), (rank, k)
    r0, r1 = (torch.load(f"{tmp_path / 'ref'}.{r}", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["gradalign"], r1["gradalign"])  # the ranks do draw different streams


def test_a_different_number_of_processes_is_refused(tmp_path: Path) -> None:
    _spawn(tmp_path, "two", tmp_path / "ckpt", "crash")
    model = _model()
    xtr, ytr, _, _ = load_digits_tensors(seed=0)
    guard = EpochScriptGuard(xtr[300:364], ytr[300:364])
    tr = AdversarialTrainer(model, lr=0.05, co_guard=guard, callbacks=[guard], checkpoint_dir=tmp_path / "ckpt",
                            val_attack=None, progress=False, verbose=False, **_method(model, 0))  # fmt: skip
    with pytest.raises(rf.RobustfastError, match=r"2 process\(es\) and this run has 1.*--nproc_per_node=2"):
        tr.fit(_loader(0, 1, n=128), EPOCHS, resume=True)


# ------------------------------------------------------------------------------- habits that used to hang
def _habits_worker(rank: int, init_file: str, out: str, case: str) -> None:
    _init(rank, init_file)
    try:
        xtr, ytr, _, _ = load_digits_tensors(seed=0)
        model = _model()
        kw: dict[str, Any] = {"val_attack": None, "progress": False, "verbose": False, "lr": 0.05}
        if case == "guard_on_rank0":
            kw["co_guard"] = COGuard(xtr[300:364], ytr[300:364]) if rank == 0 else None
        elif case == "ckpt_on_rank0":
            kw["checkpoint_dir"] = out if rank == 0 else None
            kw["co_guard"] = COGuard(xtr[300:364], ytr[300:364], on_co="rollback")
        tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), **kw)
        try:
            tr.fit(_loader(rank), 2)
            result = "ok"
        except rf.RobustfastError as e:
            result = str(e)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", ["guard_on_rank0", "ckpt_on_rank0"])
def test_settings_only_rank_0_has_are_handled_not_hung(tmp_path: Path, case: str) -> None:
    out = tmp_path / "ckpt"
    mp.spawn(_habits_worker, args=(str(tmp_path / "init"), str(out), case), nprocs=2, join=True)
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    if case == "guard_on_rank0":  # refused on every rank, naming the fix
        assert all("co_guard is set on 1 of 2 processes" in r for r in results), results
    else:  # rank 1 joins the checkpoints' gathering without writing; rank 0 writes every rank's state
        assert results == ["ok", "ok"]
        assert len(rf.training.load_checkpoint(out / "last.pt")["ranks"]) == 2
