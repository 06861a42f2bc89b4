"""Contrastive (CLIP) pretraining of the mini model on the generated image-caption world.

    python -m taskres.mini.pretrain --out /tmp/mini-run      # the recipe of the shipped weights

Symmetric InfoNCE over a batch of (image, caption) pairs with a learnable temperature initialised as
CLIP does (logit scale ln(1/0.07), clamped at 100). Every batch is drawn from the world with the seed
(seed, step), so a run is reproducible and a resumed run sees exactly the batches it would have seen.
Half of each batch comes in sets of 6 scenes that differ only in shape (hard negatives): without them a
small model matches captions by colour and count alone and never learns shape.
A checkpoint is written atomically every ``--checkpoint-every`` steps and the run resumes from it when
restarted with the same ``--out``. At the end the weights are written in fp16 as
``<out>/taskres-mini.safetensors`` with a ``taskres-mini.record.json`` that says how they were made.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from taskres.mini.world import World, WorldConfig

MINI_DIR = Path(__file__).resolve().parent
MODEL_NAME = "taskres-mini"
CONFIG_PATH = MINI_DIR / f"{MODEL_NAME}.json"
WEIGHTS_PATH = MINI_DIR / f"{MODEL_NAME}.safetensors"
RECORD_PATH = MINI_DIR / f"{MODEL_NAME}.record.json"
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class PretrainConfig:
    out: Path
    steps: int = 3000  # the shipped weights: 3000 steps of 128 (see taskres-mini.record.json)
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200
    model_config: Path = CONFIG_PATH  # an open_clip model config (.json); its stem is the model name
    threads: int | None = None  # torch CPU threads; None: re-chosen every few hundred steps (ThreadTuner)
    progress: bool = True
    world: dict[str, Any] = field(default_factory=dict)  # WorldConfig overrides (image_size comes from the model)

    @property
    def model_name(self) -> str:
        return Path(self.model_config).stem


def register_config(path: Path = CONFIG_PATH) -> str:
    """Make open_clip know the model config at ``path``; returns the model name (the file's stem)."""
    path = Path(path)
    if path.stem not in open_clip.list_models():
        open_clip.add_model_config(path)
    return path.stem


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the i-th image goes with the i-th caption (features already L2-normalised)."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    progress = min(progress, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


class BatchSource:
    """Batch ``step`` is a pure function of (seed, step): pixels normalised as open_clip expects, tokens."""

    def __init__(self, world: World, tokenizer, batch_size: int, seed: int, mean, std):
        self.world = world
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.mean = np.asarray(mean, dtype=np.float32)[None, :, None, None]
        self.std = np.asarray(std, dtype=np.float32)[None, :, None, None]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, step))
        scenes = self.world.sample_scenes(self.batch_size, rng)
        images = self.world.render(scenes, rng)
        captions = self.world.captions(scenes, rng)
        pixels = torch.from_numpy((images - self.mean) / self.std)
        return pixels, self.tokenizer(captions)


class ThreadTuner:
    """Picks torch's CPU thread count while training on a shared machine.

    When other processes hold the cores, torch's threads wait on each other and a step with 2 threads
    can take several times longer than with 1. The tuner times ``probe`` steps with each candidate count
    and keeps the fastest; it probes again every ``period`` steps, and at once when steps get much slower
    than the probe said they would be.
    """

    def __init__(self, candidates: list[int], period: int = 200, probe: int = 3, slowdown: float = 1.8):
        self.candidates = candidates
        self.period = period
        self.probe = probe
        self.slowdown = slowdown
        self.best = candidates[-1]
        self.expected = float("inf")
        self._queue: list[int] = []
        self._probe_times: dict[int, list[float]] = {}
        self._recent: list[float] = []
        self._since_probe = 0
        self._start_probe()

    def _start_probe(self) -> None:
        self._queue = [c for c in self.candidates for _ in range(self.probe)]
        self._probe_times = {}
        self._recent = []
        self._since_probe = 0

    def threads_for(self, step: int) -> int:
        return self._queue[0] if self._queue else self.best

    def record(self, threads: int, seconds: float) -> None:
        if self._queue:
            self._queue.pop(0)
            self._probe_times.setdefault(threads, []).append(seconds)
            if not self._queue:
                medians = {c: float(np.median(t)) for c, t in self._probe_times.items()}
                self.best = min(medians, key=medians.get)
                self.expected = medians[self.best]
            return
        self._since_probe += 1
        self._recent = (self._recent + [seconds])[-5:]
        slow = len(self._recent) == 5 and float(np.median(self._recent)) > self.slowdown * self.expected
        if slow or self._since_probe >= self.period:
            self._start_probe()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As CLIP: no decay on gains, biases and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_fp16_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the state dict as fp16 safetensors, atomically."""
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "model": Path(path).stem})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pretraining; returns the record also written next to the weights."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        tuner = None
    else:
        most = torch.get_num_threads()
        tuner = None if most == 1 else ThreadTuner(sorted({1, most}))
    torch.manual_seed(cfg.seed)
    name = register_config(cfg.model_config)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.train()
    tokenizer = open_clip.get_tokenizer(name)
    model_cfg = open_clip.get_model_config(name)
    image_size = model_cfg["vision_cfg"]["image_size"]
    world_cfg = WorldConfig(**{"image_size": image_size, **cfg.world})
    world = World(world_cfg)
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    source = BatchSource(world, tokenizer, cfg.batch_size, cfg.seed, mean, std)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    max_logit_scale = math.log(100.0)

    ckpt_path = out / CHECKPOINT_NAME
    start, losses, elapsed, schedule = 0, [], 0.0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, losses, elapsed = ckpt["step"], ckpt["losses"], ckpt["elapsed_s"]
        schedule = ckpt.get("schedule", [{"from_step": 0, "steps": None}])
        if ckpt.get("seed") != cfg.seed or ckpt.get("batch_size") != cfg.batch_size:
            raise ValueError(f"{ckpt_path} was written by a run with another seed or batch size; use a new --out")
    # A resumed run may change --steps, --lr or the world (a curriculum); the cosine then follows the new
    # length and peak from here on. Each change is kept as a segment in the record.
    segment = {"from_step": start, "steps": cfg.steps, "lr": cfg.lr, "world": dict(cfg.world)}
    if not schedule or any(schedule[-1].get(k) != v for k, v in segment.items() if k != "from_step"):
        schedule.append(segment)

    def checkpoint(step: int) -> None:
        _atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "losses": losses,
                "elapsed_s": elapsed,
                "seed": cfg.seed,
                "batch_size": cfg.batch_size,
                "schedule": schedule,
            },
            ckpt_path,
        )

    t0 = time.time() - elapsed
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain", disable=not cfg.progress)
    for step in bar:
        tic = time.perf_counter()
        if tuner is not None:
            threads = tuner.threads_for(step)
            torch.set_num_threads(threads)
        pixels, tokens = source(step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        image_features, text_features, logit_scale = model(pixels, tokens)[:3]
        loss = clip_loss(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_logit_scale)
        losses.append(loss.item())
        if tuner is not None:
            tuner.record(threads, time.perf_counter() - tic)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{logit_scale.item():.1f}")
        elapsed = time.time() - t0
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)
    elapsed = time.time() - t0
    final_step = max(start, cfg.steps)
    checkpoint(final_step)

    weights = out / f"{name}.safetensors"
    save_fp16_weights(model, weights)
    tail = losses[-50:] if losses else [float("nan")]
    record = {
        "model": name,
        "model_config": model_cfg,
        "seed": cfg.seed,
        "steps": final_step,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps,
        "segments": schedule,  # per change of steps/lr/world: from_step, the cosine's total steps, lr, world
        "min_lr_ratio": cfg.min_lr_ratio,
        "weight_decay": cfg.weight_decay,
        "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6), no decay on gains/biases/logit_scale",
        "loss": "symmetric InfoNCE, learnable logit scale (init ln(1/0.07), clamp ln(100))",
        "world": world_cfg.to_dict(),
        "initial_loss": float(np.mean(losses[:20])) if losses else None,
        "final_loss": float(np.mean(tail)),  # mean over the last 50 steps
        "final_logit_scale": model.logit_scale.exp().item(),
        "loss_curve": [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)],
        "wall_time_s": round(elapsed, 1),
        "weights": weights.name,
        "weights_dtype": "float16",
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {cfg.threads or 'auto'}",
        "pretrain_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    _atomic_write_text(json.dumps(record, indent=2) + "\n", out / f"{name}.record.json")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, weights, record")
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=PretrainConfig.lr)
    parser.add_argument("--warmup-steps", type=int, default=PretrainConfig.warmup_steps)
    parser.add_argument("--weight-decay", type=float, default=PretrainConfig.weight_decay)
    parser.add_argument("--seed", type=int, default=PretrainConfig.seed)
    parser.add_argument("--checkpoint-every", type=int, default=PretrainConfig.checkpoint_every)
    parser.add_argument("--model-config", type=Path, default=CONFIG_PATH, help="open_clip model config .json")
    parser.add_argument("--contrast-set-size", type=int, default=6,
                        help="hard negatives: scenes per set that differ only in shape (1: off)")
    parser.add_argument("--contrast-fraction", type=float, default=0.5,
                        help="fraction of each batch drawn as such sets")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = PretrainConfig(
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        model_config=args.model_config,
        threads=args.threads,
        progress=not args.no_progress,
        world={"contrast_set_size": args.contrast_set_size, "contrast_fraction": args.contrast_fraction}
        if args.contrast_set_size > 1 else {},
    )
    record = pretrain(cfg)
    print(
        f"wrote {Path(cfg.out) / record['weights']}: {record['steps']} steps, final loss "
        f"{record['final_loss']:.4f}, {record['wall_time_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
