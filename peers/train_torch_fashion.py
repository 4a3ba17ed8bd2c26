"""PyTorch CPU peer of `pipe build overfit` on examples/fashion-mnist: the same model
(conv 1->C1 3x3 p1, relu, maxpool 2, conv C1->C2 3x3 p1, relu, maxpool 2, optional
dense hidden layers with relu, linear head; `--dropout` as pipe's model.dropout:
whole channels after each conv block, units after each dense layer), batch,
optimizer (Adam, betas 0.9/0.999, eps 1e-8, no weight decay; constant rate or
pipe's cosine to 0 over the run), steps and evaluation cadence, trained on
the real Fashion-MNIST IDX files; prints the wall time of training (with its
evaluations) and the test accuracy, for the closing note's side-by-side figure.

PyTorch is a peer to compare against, never a dependency of pipe; keep its venv
outside the repo:
    python3 -m venv /work/torch-venv && /work/torch-venv/bin/pip install numpy torch
    /work/torch-venv/bin/python peers/train_torch_fashion.py --threads 1 --steps 6000

The split follows pipe's idea, not its exact examples: the 60,000 training images,
shuffled with a seed, 45,000 train and 15,000 validation; per-pixel standardisation
with the training split's mean and std; the 10,000 t10k images are the test split.
Weights come from PyTorch's own default init (pipe uses its own seeded init with the
recipe's last-layer bias), so accuracies agree only statistically.
"""
import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                raw = f.read()
            ndim = raw[3]
            dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise FileNotFoundError(path)


class Net(nn.Module):
    def __init__(self, channels, dense, dropout):
        super().__init__()
        self.drop2d, self.drop = nn.Dropout2d(dropout), nn.Dropout(dropout)
        self.c1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.c2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        widths = [channels[1] * 7 * 7] + dense
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1], 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = self.drop2d(F.max_pool2d(F.relu(self.c1(x)), 2))
        x = self.drop2d(F.max_pool2d(F.relu(self.c2(x)), 2)).flatten(1)
        for layer in self.dense:
            x = self.drop(F.relu(layer(x)))
        return self.fc(x)


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), 1024):
        logits = model(x[start:start + 1024])
        loss += F.cross_entropy(logits, y[start:start + 1024], reduction="sum").item()
        correct += (logits.argmax(1) == y[start:start + 1024]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--channels", default="32,64")
    ap.add_argument("--dense", default="", help="dense hidden widths, e.g. 256")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = idx(os.path.join(args.data, "train-images-idx3-ubyte")).reshape(60000, -1).astype(np.float32)
    y = idx(os.path.join(args.data, "train-labels-idx1-ubyte")).astype(np.int64)
    x_test = idx(os.path.join(args.data, "t10k-images-idx3-ubyte")).reshape(10000, -1).astype(np.float32)
    y_test = idx(os.path.join(args.data, "t10k-labels-idx1-ubyte")).astype(np.int64)
    perm = np.random.default_rng(args.seed).permutation(60000)
    train, val = perm[:45000], perm[45000:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    norm = lambda a: torch.from_numpy((a - mean) / std)
    xt, yt = norm(x[train]), torch.from_numpy(y[train])
    xv, yv = norm(x[val]), torch.from_numpy(y[val])
    xs, ys = norm(x_test), torch.from_numpy(y_test)
    channels = [int(c) for c in args.channels.split(",")]
    dense = [int(d) for d in args.dense.split(",") if d]
    model = Net(channels, dense, args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    span = max(args.steps - 1, 1)
    g = torch.Generator().manual_seed(args.seed)
    order, pos = torch.randperm(len(xt), generator=g), 0
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} steps={args.steps} batch={args.batch} "
          f"channels={channels} dense={dense} dropout={args.dropout} lr={args.lr} schedule={args.schedule}", flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(1, args.steps + 1):
        if pos + args.batch > len(xt):
            order, pos = torch.randperm(len(xt), generator=g), 0
        if args.schedule == "cosine":  # pipe's factor for 0-based step s: 0.5 (1 + cos(pi s / (steps - 1)))
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1.0 + np.cos(np.pi * min((step - 1) / span, 1.0)))
        batch = order[pos:pos + args.batch]
        pos += args.batch
        loss = F.cross_entropy(model(xt[batch]), yt[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            val_loss, val_acc = evaluate(model, xv, yv)
            print(f"step {step}: train loss {loss.item():.4f}, val loss {val_loss:.4f}, val acc {val_acc:.4f}", flush=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    test_loss, test_acc = evaluate(model, xs, ys)
    print(f"RESULT peer=PyTorch threads={args.threads} steps={args.steps} train_wall_s={wall:.1f} train_cpu_s={cpu:.1f} "
          f"val_acc={val_acc:.4f} test_acc={test_acc:.4f} test_loss={test_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
