"""How far taskres's RN50 / ViT-B-32 are from OpenAI's own code, per source of OpenAI weights.

The construction of tests/test_openai_parity.py (seeded random full-size weights made with OpenAI's model
code, written as an OpenAI TorchScript archive, a state-dict file and a planted Hugging Face cache), with the
gaps printed instead of asserted: preprocessed pixels, unit image and text features, the template-mean
classifier and the zero-shot logits (exp(logit_scale) = 100), plus the gap the nn.GELU build would have. The
reference is always OpenAI's code in fp32 on the CPU; ``--device cuda --precision fp16`` measures taskres's
fp16 autocast path against it.

    python benchmarks/openai_parity.py                      # CPU, fp32, one thread (as the suite)
    python benchmarks/openai_parity.py --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
warnings.filterwarnings("ignore")

import test_openai_parity as parity  # noqa: E402

from taskres.backbone import load_backbone  # noqa: E402


def _machine() -> str:
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        model = platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}; {gpu}; torch {torch.__version__}; {torch.get_num_threads()} thread(s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=sorted(parity.ARCHS), choices=sorted(parity.ARCHS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(_machine())
    rows = []
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.time()
            ref = parity.make_reference(arch, Path(tmp))
            print(f"{arch}: reference and files in {time.time() - started:.1f} s")
            for source in ("archive", "state_dict", "hf_cache"):
                with pytest.MonkeyPatch.context() as mp:
                    if source == "hf_cache":
                        parity.offline_hf_cache(mp, ref.root / "hub")
                    cfg = parity.backbone_config(ref, source)
                    started = time.time()
                    backbone = load_backbone(cfg.__class__(**{**cfg.__dict__, "device": args.device,
                                                             "precision": args.precision}))
                    load_s = time.time() - started
                    got = parity.gaps(ref, backbone)
                row = {"arch": arch, "source": source, "device": args.device, "precision": args.precision,
                       "activation": backbone.identity["activation"], "load_s": round(load_s, 2), **got}
                rows.append(row)
                print(f"  {source:10s} {row['activation']:10s} pixels {got['pixels']:.1e}  image {got['image']:.1e}  "
                      f"text {got['text']:.1e}  t {got['base']:.1e}  logits {got['logits']:.1e}  "
                      f"(nn.GELU text {got['gelu_text']:.1e})  load {load_s:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
