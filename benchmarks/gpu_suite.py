"""The GPU suite: what one accelerator does with the project's training paths, as JSON.

Measures, on one device, in one process (sized to finish within 8 minutes on one H100):

- ``lenet``: seconds per epoch of one LeNet-GAP l2l run (single-run engine), plain and
  with ``--compile``;
- ``stacked``: model-epochs per second of the stacked trainer at M = 16, 64, 128;
- ``resnet``: ResNet-18 and ResNet-50 l2l training images per second at 224 px, fp32
  and bf16 (uint8 upload, resize and normalise on the device, channels_last, prefetch);
- ``clip_maps``: CLIP ViT-B/16 maps per second through the ``clip`` map source, with a
  RANDOMLY INITIALISED model built from its transformers config (no weights are
  downloaded: the speed is the architecture's, the maps mean nothing).

Every number comes from the library's own code (``fit``, ``fit_stacked``, the map
source), on shapes-bg (built from its seed, no download) or ColorMNIST for the LeNet
epoch (``--lenet-dataset``). Epoch times exclude the first epoch where noted (cuDNN
autotuning, compilation). Nothing is written to ./runs.

    python benchmarks/gpu_suite.py --out gpu_suite.json            # on a GPU machine
    python benchmarks/gpu_suite.py --smoke --out smoke.json        # tiny sizes, any CPU, < 2 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import string
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from learning_to_look.config import TrainConfig
from learning_to_look.data import load_dataset
from learning_to_look.device import pick_device
from learning_to_look.maps import get_map_source
from learning_to_look.maps.weights import RANDOM_INIT
from learning_to_look.training.engine import fit
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.run import prepare
from learning_to_look.training.stacked import fit_stacked

#: Sizes of the full suite and of ``--smoke``.
FULL = {"lenet_subset": None, "stack_sizes": [16, 64, 128], "stack_subset": 10000, "resnet_images": 2048,
        "resnet_batch": 64, "clip_images": 1024, "clip": "base", "epochs": 3}
SMOKE = {"lenet_subset": 400, "stack_sizes": [2, 4], "stack_subset": 400, "resnet_images": 4, "resnet_batch": 4,
         "clip_images": 16, "clip": "tiny", "epochs": 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def lenet(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    """Seconds per epoch of one LeNet-GAP l2l run, plain and compiled (epochs after the first)."""
    out = {}
    for compiled in (False, True):
        cfg = TrainConfig(dataset=args.lenet_dataset, method="l2l", epochs=size["epochs"], e_att=1, seed=0,
                          train_subset=size["lenet_subset"], device=str(device), compile=compiled)
        run = resolve_run(cfg, args.data_dir)
        prep = prepare(run, args.data_dir, progress=False)
        fitted = fit(run, prep.train, prep.val, progress=False)
        seconds = [round(r["seconds"], 3) for r in fitted.history]
        out["compiled" if compiled else "plain"] = {"seconds_per_epoch": seconds,
                                                    "steady_seconds_per_epoch": min(seconds[1:] or seconds),
                                                    "n_train": len(prep.train), "n_val": len(prep.val),
                                                    "compile_active": compiled and device.type == "cuda"}
    return out


def stacked(args: argparse.Namespace, size: dict, device: torch.device) -> list[dict]:
    """Model-epochs per second of stacks of M l2l LeNet-GAPs (the paper's lambda0 grid, repeated)."""
    base = TrainConfig(dataset=args.lenet_dataset, method="l2l", epochs=2, e_att=1, seed=0,
                       train_subset=size["stack_subset"], device=str(device))
    run = resolve_run(base, args.data_dir)
    prep = prepare(run, args.data_dir, progress=False)
    rows = []
    for m in size["stack_sizes"]:
        cfgs = [dataclasses.replace(run.cfg, lambda0=float(100 + 20 * (i % 11))) for i in range(m)]
        _, secs = timed(device, lambda: fit_stacked(cfgs, prep.train, prep.val, progress=False))
        rows.append({"M": m, "seconds_2_epochs": round(secs, 3), "model_epochs_per_second": round(2 * m / secs, 2),
                     "n_train": len(prep.train)})
    return rows


def resnet(args: argparse.Namespace, size: dict, device: torch.device) -> list[dict]:
    """l2l training images per second at 224 px: the epochs after the first (validation of
    a fifth as many images included, as in every run), fp32 and bf16."""
    rows = []
    for backbone in ("resnet18", "resnet50"):
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(dataset="shapes-bg", method="l2l", backbone=backbone, epochs=size["epochs"], e_att=0,
                              seed=0, train_subset=size["resnet_images"], batch_size=size["resnet_batch"],
                              device=str(device), precision=precision)
            run = resolve_run(cfg, args.data_dir)
            prep = prepare(run, args.data_dir, progress=False)
            fitted = fit(run, prep.train, prep.val, progress=False)
            steady = min(r["seconds"] for r in fitted.history[1:]) if len(fitted.history) > 1 else \
                fitted.history[0]["seconds"]
            rows.append({"backbone": backbone, "precision": precision, "n_train": len(prep.train),
                         "n_val": len(prep.val), "batch_size": cfg.batch_size,
                         "uint8_on_host": bool(prep.train.size),
                         "seconds_per_epoch": [round(r["seconds"], 3) for r in fitted.history],
                         "train_images_per_second": round(len(prep.train) / steady, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _tokenizer() -> Any:
    """A character-level CLIPTokenizer: the real class, with an offline vocabulary."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ".,{}'- "
    vocab = {c: i for i, c in enumerate(chars)} | {f"{c}</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    folder = Path(tempfile.mkdtemp())
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def random_clip(folder: Path, kind: str) -> str:
    """A randomly initialised CLIP saved as a ``--vlm`` folder: ViT-B/16's shape, or a tiny one."""
    from transformers import CLIPConfig, CLIPModel

    tok = _tokenizer()
    text = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id)
    if kind == "base":  # ViT-B/16: 12 layers of width 768, 224 px, 16 px patches
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=16)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
        label = "random-init CLIP ViT-B/16 (config only, no weights)"
    else:
        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        config = CLIPConfig(text_config=dict(small, max_position_embeddings=64, **text),
                            vision_config=dict(small, image_size=32, patch_size=8), projection_dim=32)
        label = "random-init tiny CLIP (config only, no weights)"
    config.l2l_weights = RANDOM_INIT
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return label


def clip_maps(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    """Maps per second of the ``clip`` map source on shapes-bg images, after a warm-up batch."""
    with tempfile.TemporaryDirectory() as tmp:
        label = random_clip(Path(tmp), size["clip"])
        source = get_map_source("clip", vlm=tmp, device=str(device))
        split = load_dataset("shapes-bg", args.data_dir).train
        source.generate(split.subset(torch.arange(min(8, size["clip_images"])).numpy()))  # load and warm up
        images = split.subset(torch.arange(size["clip_images"]).numpy())
        _, secs = timed(device, lambda: source.generate(images))
    return {"model": label, "maps": size["clip_images"], "seconds": round(secs, 3),
            "maps_per_second": round(size["clip_images"] / secs, 2), "batch_size": source.inference_batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_suite.json"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", type=Path, default=None, help="folder of built data sets (built there if missing)")
    ap.add_argument("--lenet-dataset", default=None, help="data set of the LeNet parts [default: colormnist; "
                                                          "shapes-bg with --smoke]")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs, on any CPU")
    ap.add_argument("--only", nargs="*", default=["lenet", "stacked", "resnet", "clip_maps"])
    args = ap.parse_args()
    args.lenet_dataset = args.lenet_dataset or ("shapes-bg" if args.smoke else "colormnist")
    size, device = (SMOKE if args.smoke else FULL), pick_device(args.device)
    result: dict[str, Any] = {"smoke": args.smoke, "device": str(device), "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                              "threads": torch.get_num_threads(), "platform": platform.platform(), "sizes": size}
    parts = {"lenet": lenet, "stacked": stacked, "resnet": resnet, "clip_maps": clip_maps}
    t0 = time.perf_counter()
    for name in args.only:
        t = time.perf_counter()
        result[name] = parts[name](args, size, device)
        result.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {json.dumps(result[name])}", flush=True)
        args.out.write_text(json.dumps(result, indent=2))  # what is done so far survives a timeout
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} in {result['total_seconds']} s")


if __name__ == "__main__":
    main()
