"""PyTorch timings of the yaware-rs bench workloads (same shapes and steps) on this machine.

Usage: `python3 benches/compare/torch_bench.py [resnet_eval resnet_stages resnet_train_fwd_bwd
resnet_step mlp_step loss adamw]` (default: resnet_eval resnet_step mlp_step). Needs torch and numpy;
2 threads, medians of repeated runs, as criterion reports medians.
"""
import time, statistics, sys
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)

def conv3(i, o, s=1):
    return nn.Conv3d(i, o, 3, s, 1, bias=False)

class Basic(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1, self.bn1 = conv3(i, o, s), nn.BatchNorm3d(o)
        self.conv2, self.bn2 = conv3(o, o), nn.BatchNorm3d(o)
        self.down = None
        if s != 1 or i != o:
            self.down = nn.Sequential(nn.Conv3d(i, o, 1, s, bias=False), nn.BatchNorm3d(o))
    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))

class ResNet18(nn.Module):
    def __init__(self, emb=512):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.pool = nn.MaxPool3d(3, 2, 1)
        layers, i = [], 64
        for o, s in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Basic(i, o, s), Basic(o, o, 1)]
            i = o
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, emb)
    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool3d(x, 1), 1))

def head(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))

def yaware_loss(z1, z2, y, tau=0.1, sigma2=1.0):
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    s = z @ z.T / tau
    s = s - 1e8 * torch.eye(2 * n)
    ls = F.log_softmax(s, dim=1)
    yy = np.concatenate([y, y]).reshape(2 * n, -1).astype(np.float64)
    d2 = ((yy[:, None, :] - yy[None, :, :]) ** 2).sum(-1) / sigma2
    w = np.exp(-0.5 * d2)
    np.fill_diagonal(w, 0.0)
    w /= w.sum(axis=1)
    return -(torch.from_numpy(w) * ls).sum() / n

def timeit(f, reps, warm=2):
    for _ in range(warm):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)

def step_fn(enc, hd, x1, x2, y):
    params = list(enc.parameters()) + list(hd.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=5e-5)
    def step():
        opt.zero_grad()
        loss = yaware_loss(hd(enc(x1)), hd(enc(x2)), y)
        loss.backward()
        opt.step()
    return step

which = sys.argv[1:] or ["resnet_eval", "resnet_step", "mlp_step"]
y8 = np.random.default_rng(0).normal(size=8)
if "resnet_eval" in which:
    net = ResNet18().eval()
    x = torch.randn(8, 1, 32, 32, 32)
    with torch.no_grad():
        med, best = timeit(lambda: net(x), 30)
    print(f"resnet18_eval_fwd b8x1x32^3: median {med*1e3:.1f} ms, best {best*1e3:.1f} ms")
if "resnet_stages" in which:
    # The eval forward cut after the stem and after each layer, as the yaware-rs benchmarks
    # backbones/resnet18_trunc_eval_fwd/depth{0..4}: consecutive differences give each stage.
    net = ResNet18().eval()
    x = torch.randn(8, 1, 32, 32, 32)
    stem = lambda t: net.pool(F.relu(net.bn1(net.conv1(t))))
    for depth in range(5):
        blocks = net.layers[: 2 * depth]
        with torch.no_grad():
            med, best = timeit(lambda: blocks(stem(x)), 30)
        cut = f"layer{depth}" if depth else "the stem"
        print(f"resnet18 eval cut after {cut}: median {med*1e3:.1f} ms, best {best*1e3:.1f} ms")
if "resnet_train_fwd_bwd" in which:
    net = ResNet18().train()
    x = torch.randn(8, 1, 32, 32, 32)
    def fb():
        net.zero_grad(); net(x).sum().backward()
    med, best = timeit(fb, 15)
    print(f"resnet18_train_fwd_bwd: median {med*1e3:.1f} ms, best {best*1e3:.1f} ms")
if "resnet_step" in which:
    enc, hd = ResNet18().train(), head(512, 512, 128)
    x = torch.randn(8, 1, 32, 32, 32)
    med, best = timeit(step_fn(enc, hd, x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x), y8), 15)
    print(f"resnet18 train step: median {med*1e3:.1f} ms, best {best*1e3:.1f} ms")
if "mlp_step" in which:
    enc = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256))
    hd = head(256, 512, 128)
    x = torch.randn(256, 64)
    y = np.random.default_rng(1).normal(size=256)
    med, best = timeit(step_fn(enc, hd, x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x), y), 200, warm=20)
    print(f"mlp train step: median {med*1e3:.2f} ms, best {best*1e3:.2f} ms")
if "loss" in which:
    for n in (64, 256, 1024):
        z1 = torch.randn(n, 128, requires_grad=True)
        z2 = torch.randn(n, 128, requires_grad=True)
        y = np.random.default_rng(2).normal(50, 15, size=n)
        def lf():
            yaware_loss(z1, z2, y, sigma2=25.0).backward()
        med, best = timeit(lf, 30 if n < 1024 else 10)
        print(f"yaware loss fwd+bwd n{n} d128: median {med*1e3:.2f} ms, best {best*1e3:.2f} ms")
if "adamw" in which:
    p = torch.zeros(33_225_664, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p], lr=1e-4)
    med, best = timeit(opt.step, 20)
    print(f"adamw step 33.2M f32: median {med*1e3:.1f} ms, best {best*1e3:.1f} ms")
print("torch", torch.__version__, "threads", torch.get_num_threads())
