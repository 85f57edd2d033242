"""numpy / scipy timings of the `data` bench transforms on one 1 x 121 x 145 x 121 f32 volume.

Run on the machine of docs/PERFORMANCE.md: `python3 benches/compare/numpy_data.py`
(needs numpy and scipy). Not the reference code: the same operations written the usual numpy way.
"""
import numpy as np, timeit
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 121, 145, 121), dtype=np.float32)
target = (128, 128, 128)
def crop_or_pad_pad(v):
    # pad then crop, centred (torchio / nidl style: np.pad with constant 0, then slice)
    pads = [(0, 0)]
    for s, t in zip(v.shape[1:], target):
        d = max(t - s, 0)
        pads.append((d // 2, d - d // 2))
    p = np.pad(v, pads)
    sl = [slice(None)]
    for s, t in zip(p.shape[1:], target):
        a = (s - t) // 2
        sl.append(slice(a, a + t))
    return np.ascontiguousarray(p[tuple(sl)])
def crop_or_pad_direct(v):
    out = np.zeros((v.shape[0],) + target, dtype=v.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, t in zip(v.shape[1:], target):
        if s >= t:
            a = (s - t) // 2; src.append(slice(a, a + t)); dst.append(slice(None))
        else:
            a = (t - s) // 2; src.append(slice(None)); dst.append(slice(a, a + s))
    out[tuple(dst)] = v[tuple(src)]
    return out
def rot(v):
    return np.ascontiguousarray(np.rot90(v, 1, axes=(1, 2)))
def flip(v):
    return np.ascontiguousarray(v[:, ::-1, ::-1, ::-1])
def znorm(v):
    return (v - v.mean()) / v.std()
for name, f in [("clone", lambda v: v.copy()), ("crop_or_pad np.pad+slice", crop_or_pad_pad), ("crop_or_pad zeros+assign", crop_or_pad_direct), ("rot90 copy", rot), ("flip copy", flip), ("znorm", znorm)]:
    t = timeit.repeat(lambda: f(x), number=1, repeat=50)
    t.sort()
    print(f"{name:30s} best {t[0]*1e3:.2f} ms  median {t[len(t)//2]*1e3:.2f} ms")
from scipy import ndimage
def noise(v):
    return v + rng.normal(0.0, 0.1, size=v.shape).astype(np.float32)
def blur(v):
    return ndimage.gaussian_filter(v, sigma=(0, 1, 1, 1), mode="reflect", truncate=4.0)
def rescale(v):
    lo, hi = np.percentile(v, (1, 99))
    c = np.clip(v, lo, hi)
    return (c - lo) / (hi - lo)
for name, f in [("gaussian noise", noise), ("gaussian blur sigma 1", blur), ("robust rescaling", rescale)]:
    t = timeit.repeat(lambda: f(x), number=1, repeat=20)
    t.sort()
    print(f"{name:30s} best {t[0]*1e3:.2f} ms  median {t[len(t)//2]*1e3:.2f} ms")
