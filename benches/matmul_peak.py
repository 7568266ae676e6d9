"""The machine's measured matrix-product peak, the yardstick for the fraction of peak that training reaches.

Times square float32 and bfloat16 products (torch.mm, the same libtorch kernels charrnn calls) of a few
sizes and prints the best rate of each in GFLOP/s (2 n^3 operations per product).

Usage: python benches/matmul_peak.py [--device cpu|cuda] [--threads N]
"""
import argparse
import time

import torch


def rate(n, dtype, device, repeats):
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    sizes = [1024, 2048, 4096] if device.type == "cpu" else [4096, 8192, 16384]
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        print(name, "%.0f" % max(rate(n, dtype, device, 5) for n in sizes))


if __name__ == "__main__":
    main()
