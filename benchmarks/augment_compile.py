"""Multi-crop augmentation alone, eager against ``compile_stages`` (what ``--compile`` adds).

Both modules run in one process on the same uint8 batch, in interleaved timed windows
after warm-up, so machine noise hits both alike; prints the median views per second of
each and their ratio, and writes every window with ``--json-out``.

    python benchmarks/augment_compile.py --help
    python benchmarks/augment_compile.py --device cpu --threads 1 --batch-size 64
    # DINO's GPU views, with the operations that take the time (torch.profiler):
    python benchmarks/augment_compile.py --device cuda --batch-size 256 --image-size 224 \
        --global-size 224 --local-size 96 --profile 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from leukoshift.config import PretrainConfig, load_config
from leukoshift.domain.augment import build_multicrop


def top_operations(
    module: torch.nn.Module, x: torch.Tensor, batches: int, top: int, device: torch.device
) -> list[dict[str, float | str]]:
    """The operations taking the most self time over ``batches`` batches (device time on a
    GPU, where the host only queues kernels), per batch, largest first."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(batches):
            module.forward_groups(x)
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    # Kernels carry the device time; on a CPU the operators carry the host time.
    self_us = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    ranked = sorted((e for e in events if self_us(e) > 0), key=self_us, reverse=True)[:top]
    return [
        {"op": e.key, "ms_per_batch": self_us(e) / 1000 / batches, "calls_per_batch": e.count / batches} for e in ranked
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64, help="side of the cached images")
    p.add_argument("--global-size", type=int, default=64)
    p.add_argument("--local-size", type=int, default=32)
    p.add_argument("--n-local", type=int, default=6)
    p.add_argument("--steps", type=int, default=5, help="batches per timed window")
    p.add_argument("--windows", type=int, default=9, help="timed windows per module")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N batches of each module and list the operations that take the "
        "most device time (CPU time on a CPU) per batch",
    )
    p.add_argument("--top", type=int, default=12, help="operations listed per module with --profile")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(
        PretrainConfig,
        None,
        [
            f"multicrop.global_size={args.global_size}",
            f"multicrop.local_size={args.local_size}",
            f"multicrop.n_local={args.n_local}",
        ],
    )
    eager = build_multicrop(cfg.multicrop, cfg.augment).to(device)
    compiled = build_multicrop(cfg.multicrop, cfg.augment).to(device)
    compiled.compile_stages()
    x = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, device=device)
    views = args.batch_size * (cfg.multicrop.n_global + args.n_local)

    def window(module: torch.nn.Module) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            module.forward_groups(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return args.steps * views / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    with torch.no_grad():
        for module in (eager, compiled):  # warm-up, compilation included
            for _ in range(3):
                module.forward_groups(x)
        for _ in range(args.windows):
            rates["eager"].append(window(eager))
            rates["compiled"].append(window(compiled))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    for name, rate in medians.items():
        print(f"{name:<9} {rate:10,.0f} views/s (median of {args.windows} windows)")
    print(f"compiled / eager: {medians['compiled'] / medians['eager']:.2f}x")
    profiles = {}
    if args.profile:
        with torch.no_grad():
            for name, module in (("eager", eager), ("compiled", compiled)):
                profiles[name] = top_operations(module, x, args.profile, args.top, device)
                print(f"\n{name}: ms per batch by operation (self time, top {args.top})")
                for row in profiles[name]:
                    print(f"  {row['ms_per_batch']:8.3f}  {row['calls_per_batch']:6.1f} calls  {row['op'][:90]}")
    if args.json_out:
        report = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "views_per_s": medians,
            "windows": rates,
            "profile": profiles,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
