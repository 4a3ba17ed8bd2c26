"""PyTorch CPU peer of `cargo bench -p pipelines --bench conv`: the same two convnets,
batch 64, Adam lr 3e-4 (betas 0.9/0.999, eps 1e-8, no weight decay), full training
steps (forward, cross-entropy, backward, update) with batch gathering inside the timed
loop, 50 warm-up steps, median and best of --rounds rounds of at least --secs seconds.

PyTorch is a peer to compare against, never a dependency of pipe; keep its venv
outside the repo:
    python3 -m venv /tmp/torch-peer && /tmp/torch-peer/bin/pip install numpy torch
    /tmp/torch-peer/bin/python peers/bench_torch_conv.py --threads 1

Data: the digits CNN trains on scikit-learn's digits if it is importable (standardised,
first 1078 examples, like pipe's 60% split), else on seeded noise of the same shape;
the Fashion-sized convnet on 2048 seeded noise images with random labels, as the
Rust bench does (the speed does not depend on the values).
Prints one `RESULT` line per model in the Rust bench's format, including steps per
CPU-second (process CPU time, all threads), steadier than wall time on a shared machine.
"""
import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 64
LR = 3e-4


class DigitsCNN(nn.Module):
    """conv 1->16 3x3 p1, relu, conv 16->32 3x3 p1, relu, maxpool 2, linear 512->10."""

    side = 8

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


class FashionConvNet(nn.Module):
    """conv 1->32 3x3 p1, relu, maxpool 2, conv 32->64 3x3 p1, relu, maxpool 2, linear 3136->10."""

    side = 28

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


MODELS = {"digits": ("digits-cnn", DigitsCNN), "fashion": ("fashion-convnet", FashionConvNet)}


def flops_per_step(model_cls):
    """The Rust bench's count: conv forward + weight grad (+ input grad after the first), linear x3."""
    side = model_cls.side
    m = model_cls()
    total = 0.0
    convs = [m.c1, m.c2]
    for i, conv in enumerate(convs):
        fwd = 2.0 * BATCH * conv.out_channels * side * side * conv.in_channels * 9
        total += fwd * (2 if i == 0 else 3)
        if (model_cls is FashionConvNet) or i == 1:
            side //= 2
    return total + 3 * 2.0 * BATCH * m.fc.in_features * m.fc.out_features


def data(name):
    rng = np.random.default_rng(0)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits

            x, y = load_digits(return_X_y=True)
            x = x[:1078].astype(np.float32)
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
            return torch.from_numpy(x), torch.from_numpy(y[:1078].astype(np.int64))
        except ImportError:
            n, features = 1078, 64
    else:
        n, features = 2048, 28 * 28
    x = rng.standard_normal((n, features), dtype=np.float32)
    y = rng.integers(0, 10, n)
    return torch.from_numpy(x), torch.from_numpy(y)


def measure(name, rounds, secs, device="cpu"):
    label, cls = MODELS[name]
    torch.manual_seed(0)
    model = cls().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    x_all, y_all = data(name)
    x_all, y_all = x_all.to(device), y_all.to(device)
    n = x_all.shape[0]
    g = torch.Generator().manual_seed(0)
    state = {"perm": torch.randperm(n, generator=g), "pos": 0}

    def step():
        if state["pos"] + BATCH > n:  # drop_last, reshuffle each epoch
            state["perm"] = torch.randperm(n, generator=g)
            state["pos"] = 0
        idx = state["perm"][state["pos"]:state["pos"] + BATCH]
        state["pos"] += BATCH
        idx = idx.to(device)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(50):
        step()
        if time.perf_counter() - start > secs:
            break
    rates = []
    cpu_start, total = time.process_time(), 0
    for _ in range(rounds):
        start = time.perf_counter()
        steps = 0
        while steps == 0 or time.perf_counter() - start < secs:
            step()
            steps += 1
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(steps / (time.perf_counter() - start))
        total += steps
    per_cpu = total / max(time.process_time() - cpu_start, 1e-9)
    return label, statistics.median(rates), max(rates), per_cpu, flops_per_step(cls)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="digits,fashion")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=float, default=1.0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check, scripts/check-cuda)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} "
          f"cpu_capability={torch.backends.cpu.get_cpu_capability()} batch={BATCH}")
    for name in args.models.split(","):
        label, median, best, per_cpu, flops = measure(name, args.rounds, args.secs, args.device)
        print(f"RESULT model={label} backend=PyTorch device={args.device} threads={args.threads} median_steps_per_s={median:.1f} "
              f"best_steps_per_s={best:.1f} steps_per_cpu_s={per_cpu:.1f} mflop_per_step={flops / 1e6:.2f} "
              f"gflop_per_s={median * flops / 1e9:.2f}", flush=True)


if __name__ == "__main__":
    main()
