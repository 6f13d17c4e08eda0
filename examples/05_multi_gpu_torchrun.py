"""Multi-GPU (or multi-process CPU) adversarial training with ``torchrun`` and DistributedDataParallel.

Each process initializes the process group, builds the same model from the same seed and a training loader
with a :class:`~torch.utils.data.DistributedSampler` (its own shard of every epoch). The
:class:`~robustfast.training.AdversarialTrainer` then does the rest: it wraps the model in DDP when a process
group is initialized, calls ``sampler.set_epoch``, all-reduces its metrics (loss, accuracy, validation
accuracy) and writes logs and checkpoints on rank 0 only. The global batch is ``--batch-size × world size``.

Tiny run on CPU, 2 processes with the gloo backend (offline, scikit-learn's digits; seconds)::

    torchrun --nproc_per_node=2 examples/05_multi_gpu_torchrun.py --backend gloo --tiny

Small run on CPU (a few epochs of N-FGSM on digits)::

    torchrun --nproc_per_node=2 examples/05_multi_gpu_torchrun.py --backend gloo

The real thing, on one machine with 8 GPUs (NCCL, one GPU per process; PreAct ResNet-18 on CIFAR-10,
ε = 8/255, N-FGSM, 30 epochs, global batch 8 × 128 with the peak lr scaled accordingly; CIFAR-10 is downloaded
by rank 0 first)::

    torchrun --nproc_per_node=8 examples/05_multi_gpu_torchrun.py --data cifar10 --epochs 30 \\
        --lr 0.8 --amp bf16 --checkpoint-dir ckpt --log-dir logs

Several machines: the usual ``torchrun --nnodes=2 --node_rank=... --rdzv_endpoint=host:port ...``. Re-running
the same command with ``--checkpoint-dir`` resumes from ``last.pt`` exactly: the checkpoint holds every process's
own random streams (here each rank's N-FGSM noise generator) and each process gets its own back, so a run killed
and resumed ends bit for bit where the uninterrupted one would. Resume with the same number of processes and batch
size (another number is refused, naming it). A ``COGuard`` takes one decision for all ranks (BatchNorm statistics
synced, counts summed), so a rollback never splits the processes.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import robustfast as rf
from robustfast.training import AdversarialTrainer, Cyclic


def datasets(name: str, root: str, rank: int) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, float]:
    """(train set, test set, eps): the offline digits, or CIFAR-10 (downloaded by rank 0 first)."""
    if name == "digits":
        xtr, ytr, xte, yte = rf.data.load_digits_tensors(seed=0)
        return TensorDataset(xtr, ytr), TensorDataset(xte, yte), 0.1
    if rank == 0:
        rf.data.vision_dataset("cifar10", root, train=True, download=True)
        rf.data.vision_dataset("cifar10", root, train=False, download=True)
    dist.barrier()
    train = rf.data.vision_dataset("cifar10", root, train=True)
    return train, rf.data.vision_dataset("cifar10", root, train=False), 8 / 255


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default=None, help="process-group backend (default: nccl with CUDA, else gloo)")
    p.add_argument("--data", choices=("digits", "cifar10"), default="digits")
    p.add_argument("--data-root", default="./data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="per-process batch size")
    p.add_argument("--lr", type=float, default=0.05, help="peak of the cyclic learning rate")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--checkpoint-dir", default=None, help="save last.pt there each epoch (rank 0); resumes from it")
    p.add_argument("--log-dir", default=None, help="write history.json / history.csv there (rank 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (CI)")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs = 1

    # torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    dist.init_process_group(args.backend or ("nccl" if use_cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # one core per process
    try:
        train_set, test_set, eps = datasets(args.data, args.data_root, rank)
        if args.tiny:
            train_set = torch.utils.data.Subset(train_set, range(256))
            test_set = torch.utils.data.Subset(test_set, range(128))
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)  # set_epoch: by the trainer
        train = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)
        # validation is sharded too; the trainer sums correct counts over ranks
        test = DataLoader(test_set, batch_size=256, sampler=DistributedSampler(test_set, shuffle=False))

        torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        if args.data == "digits":
            model = rf.models.create("small_cnn", num_classes=10, in_chans=1)
        else:
            model = rf.models.create("preact_resnet18", num_classes=10)
        model = model.to(device)
        attack = rf.NFGSM(model, eps=eps, seed=args.seed + rank)  # a different noise stream per rank
        trainer = AdversarialTrainer(
            model, attack, lr_schedule=Cyclic(lr_max=args.lr), lr=args.lr, amp=args.amp,
            checkpoint_dir=args.checkpoint_dir, log_dir=args.log_dir, progress=args.data != "digits",
        )  # fmt: skip
        history = trainer.fit(train, args.epochs, val_loader=test, resume=args.checkpoint_dir is not None)
        if trainer.is_main_process:
            for h in history:
                print(f"epoch {h['epoch'] + 1}: train loss {h['train_loss']:.3f}, val acc {h['val_acc']:.3f}, "
                      f"val PGD-10 acc {h['val_robust_acc']:.3f}, {h['time']:.1f}s")  # fmt: skip
            last = history[-1]
            print(
                f"RESULT world_size={world} clean={last['val_acc']:.3f} pgd10={last['val_robust_acc']:.3f}", flush=True
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
