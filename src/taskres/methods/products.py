"""Which precision TaskRes's two matrix products run in: ``--set products=fp32|bf16|auto``.

fp32 is the faithful default. bf16 operands (float32 accumulation) are 2-3 times faster where the hardware
has bf16 dot products (x86 ``avx512_bf16`` or AMX) and several times *slower* where it has not (an AVX2
CPU emulates them: the issue measured 6.6x). So nothing is assumed from the CPU's name: ``auto`` times a
few steps of both paths at the run's shape on this machine and takes bf16 only where it measured clearly
faster; asking for bf16 where it measured slower warns once with the factor. The probe's timings are
cached in ``$TASKRES_CACHE/products-probe.json``, keyed by the CPU (model and flags) or GPU, the torch
version, the threads and the shape, so a machine measures each shape once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from ..atomic import write_json_atomic

log = logging.getLogger("taskres")

CHOICES = ("fp32", "bf16", "auto")
# bf16 is chosen only when its step takes at most this fraction of the fp32 step's time: a margin over the
# probe's noise on a shared machine, so that a tie never switches a run off the faithful path.
BF16_MARGIN = 0.9

Timings = dict  # {"fp32": seconds per step, "bf16": seconds per step}
_warned: set[str] = set()


def check_choice(products: str) -> None:
    if products not in CHOICES:
        raise ValueError(f"--set products must be one of {', '.join(CHOICES)}, not {products!r}")


def decide(timings: Timings) -> str:
    """bf16 where its measured step is clearly faster than fp32's, else the faithful fp32."""
    return "bf16" if timings["bf16"] <= BF16_MARGIN * timings["fp32"] else "fp32"


def default_probe_path() -> Path:
    return Path(os.environ.get("TASKRES_CACHE", Path.home() / ".cache" / "taskres")) / "products-probe.json"


def _cpu_identity() -> str:
    """The CPU's model name and flags (what decides whether bf16 dot products exist), from /proc/cpuinfo."""
    model, flags = None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return f"{model} [flags {hashlib.sha256(flags.encode()).hexdigest()[:12]}]"


def machine_key(device: torch.device, classes: int, dim: int, batch: int, fused: bool) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_identity()
    return (f"{where} | torch {torch.__version__} | {torch.get_num_threads()} threads | {device.type} | "
            f"{classes}x{dim} batch {batch} | fused={bool(fused)}")


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); measuring the products again and rewriting it", path, exc)
        return {}


def _valid(entry) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) and entry[k] > 0
                                           for k in ("fp32", "bf16"))


def cached_timings(key: str, measure: Callable[[], Timings], path: Path | None = None) -> tuple[Timings, bool]:
    """The probe's timings for ``key``: from the cache file, else measured now and stored (atomically).
    Returns (timings, whether they came from the cache)."""
    path = default_probe_path() if path is None else Path(path)
    data = _read(path)
    if _valid(data.get(key)):
        return {k: float(data[key][k]) for k in ("fp32", "bf16")}, True
    timings = {k: float(v) for k, v in measure().items()}
    data[key] = timings
    try:
        write_json_atomic(path, data)
    except OSError as exc:  # a read-only cache costs a probe per run, not the run
        log.warning("could not store the products probe in %s (%s)", path, exc)
    return timings, False


def time_steps(base: torch.Tensor, batch: int, device: torch.device, fused: bool, steps: int = 4,
               repeats: int = 3) -> Timings:
    """Seconds per TaskRes step with fp32 and with bf16 products at this shape on ``device``: the same steps
    a run would take (the fused kernels where the run would use them), on random data, alternating the two
    paths and keeping each one's fastest repeat (the least disturbed by other work on the machine)."""
    from .fused import available as fused_available
    from .taskres import FusedStep, ResidualGradient
    from .training import CoupledAdam

    gen = torch.Generator().manual_seed(0)
    classes, dim = base.shape
    weights = base.detach().float().to(device)
    raw = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device)
    labels = torch.randint(classes, (batch,), generator=gen).to(device)

    def make(products):
        residual = torch.zeros_like(weights)
        if fused and device.type == "cpu" and fused_available():
            step = FusedStep(weights, residual, 0.5, 100.0, 1e-4, 5e-4, products)
            feats = raw.to(step.feature_dtype)
            return lambda: step(feats, labels, 1e-4)
        grad = ResidualGradient(weights, 0.5, 100.0, products)
        adam = CoupledAdam(residual, 1e-4, 5e-4)
        feats = raw.to(grad.feature_dtype)
        return lambda: adam.step(grad(feats, labels, residual)[1])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runs = {p: make(p) for p in ("fp32", "bf16")}
    best = {p: float("inf") for p in runs}
    for run in runs.values():  # warm-up: first calls compile kernels and allocate buffers
        run(), run()
    for _ in range(repeats):
        for p, run in runs.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                run()
            sync()
            best[p] = min(best[p], (time.perf_counter() - start) / steps)
    return best


def choose_products(requested: str, base: torch.Tensor, batch: int, device: torch.device, fused: bool,
                    measure: Callable[[], Timings] | None = None, path: Path | None = None) -> str:
    """The products a run uses: ``fp32`` as asked; ``auto`` resolved by the probe; ``bf16`` as asked, with a
    warning (once per machine and shape) where the probe measured it slower than fp32.

    ``measure`` (a function returning the timings) replaces the probe, e.g. in tests."""
    check_choice(requested)
    if requested == "fp32":
        return "fp32"
    classes, dim = base.shape
    key = machine_key(device, classes, dim, batch, fused)
    timings, cached = cached_timings(key, measure or (lambda: time_steps(base, batch, device, fused)), path)
    factor = timings["bf16"] / timings["fp32"]
    if requested == "auto":
        chosen = decide(timings)
        log.info("products=auto: %s (%s: a bf16-products step took %.2fx the time of an fp32 one%s)", chosen,
                 "cached probe" if cached else "measured now", factor, "" if chosen == "bf16" else
                 f"; bf16 is taken only at <= {BF16_MARGIN:g}x")
        return chosen
    if factor > 1.0 and key not in _warned:
        _warned.add(key)
        log.warning("products=bf16 is %.2fx slower than fp32 on this machine (measured at %d x %d, batch %d): "
                    "it has no fast bf16 dot products; --set products=fp32 (faithful) or auto is faster",
                    factor, classes, dim, batch)
    return "bf16"
