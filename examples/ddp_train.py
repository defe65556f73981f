"""Train a CNN with the sparsity penalty and measure it with the monitor, in DDP, in a plain loop.

Run with two processes (gloo on the CPU, NCCL with one GPU per process when CUDA is there)::

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --out runs/ddp

or as one ordinary process, which gives the same statistics up to float rounding::

    python examples/ddp_train.py --out runs/one

What matters for DDP, in the order it appears below:

* the monitor and the penalty are built on the bare model (``ddp.module`` works as well) and
  used exactly as in one process; the forwards go through the DDP wrapper;
* the penalty is a per-rank mean over that rank's maps (``axis="spatial"``); with equal shards,
  DDP's gradient averaging then gives the gradient of the global mean. (``axis="sample"``
  measures over the rank's own samples, so it is not the same as in one process);
* ``monitor.compute()`` is a collective: call it on **every** rank. It sums the statistics of
  all ranks exactly, also when shards are uneven or a rank had no batch;
* the test split is sharded without padding (``DistributedSampler`` would repeat samples to
  even the shards out, and they would be measured twice).

Writes ``stats.json`` (per epoch: train loss, penalty, the monitor's layer table and per-channel
histograms) on rank 0.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from xaisparse import SparsityMonitor, SparsityPenalty
from xaisparse._io import atomic_write_json
from xaisparse.data import load_digits_dataset
from xaisparse.models import SmallCNN


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, help="folder for stats.json")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size, split over the ranks")
    parser.add_argument("--train-subset", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight", type=float, default=0.1, help="λ of the sparsity penalty")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {world} processes")

    data = load_digits_dataset(size=16, train_subset=args.train_subset, seed=args.seed)
    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = SmallCNN(in_channels=1, num_classes=10, depth=2, width=8, image_size=16).to(device)
    net = DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    sampler = DistributedSampler(
        data.train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    train = DataLoader(data.train, batch_size=args.batch_size // world, sampler=sampler, drop_last=True)
    test = DataLoader(Subset(data.test, range(rank, len(data.test), world)), batch_size=128)

    penalty = SparsityPenalty(model, weight=args.weight)  # default layers: the conv-block ReLUs
    monitor = SparsityMonitor(model)
    epochs = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (task loss, penalty) summed over steps
        steps = 0
        with penalty:
            for x, y in train:
                x, y = x.to(device), y.to(device)
                task = F.cross_entropy(net(x), y)
                reg = penalty()
                optimizer.zero_grad(set_to_none=True)
                (task + reg).backward()
                optimizer.step()
                loss_sum += torch.stack([task.detach(), reg.detach()]).double()
                steps += 1
        if distributed:  # the ranks' means of equal shards, averaged: the global means
            dist.all_reduce(loss_sum)
            loss_sum /= world
        net.eval()
        with monitor.track(split="test"), torch.no_grad():
            for x, _ in test:
                net(x.to(device))
        report = monitor.compute()  # on every rank: a collective
        monitor.reset()
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": float(loss_sum[0]) / steps,
                "penalty": float(loss_sum[1]) / steps,
                "layers": report.layers.to_dict(orient="list"),
                "spatial_hist": {layer: h.tolist() for (_, layer), h in report.spatial_hist.items()},
            }
        )
        if rank == 0:
            sm = report.layers[report.layers.statistic == "spatial_mean"].set_index("layer").value
            print(f"epoch {epoch}: loss {epochs[-1]['train_loss']:.4f}  test sparsity {sm.round(3).to_dict()}")
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_json(os.path.join(args.out, "stats.json"), {"world_size": world, "epochs": epochs})
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
