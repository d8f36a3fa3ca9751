"""Framework overhead: the Lightning training loop against a plain PyTorch loop on the same model, data and
batch size, and data loading from the `.pt` cache against decoding the PNGs every epoch.

    python benchmarks/framework_overhead.py [--steps 40] [--repeats 3] [--input-size 224]

Writes benchmarks/results/framework_overhead.json. The two loops are timed alternately (plain, Lightning,
plain, ...) over the same steady-state steps, so drift in machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from common import DATA_ROOT, ROOT, machine, script_provenance
from studykit.data.cxr_landmarks import prepare_cxr_landmarks
from studykit.data.images import read_grey
from studykit.data.landmark_datamodule import LandmarkDataset
from studykit.losses import WingLoss
from studykit.models.landmark_module import LandmarkModule
from studykit.utils.io import safe_torch_load

SPLITS = {"train": "coordenadas/coordenadas_train.csv", "val": "coordenadas/coordenadas_val.csv",
          "test": "coordenadas/coordenadas_test.csv"}
AUGMENT = {"hflip_p": 0.5, "rotate_limit": 15, "brightness": 0.4, "contrast": 0.4}
PAIRS = [(3, 4), (5, 6), (7, 8), (12, 13), (14, 15)]
BACKBONE = {"name": "resnet18", "pretrained": {"source": "none"}}
HEAD = {"hidden": [512, 256], "dropout": [0.5, 0.25, 0.125]}


class PngDataset(LandmarkDataset):
    """The same items as LandmarkDataset, but each image decoded from its PNG on every access."""

    def __init__(self, paths: list[Path], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.paths = paths

    def __getitem__(self, idx: int):
        self.images[idx] = torch.from_numpy(read_grey(self.paths[idx]))
        return super().__getitem__(idx)


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def make_module(seed: int) -> LandmarkModule:
    torch.manual_seed(seed)
    module = LandmarkModule(BACKBONE, HEAD, loss=WingLoss())
    module.set_stage({"freeze_backbone": False, "epochs": 1,
                      "optimizer": {"_target_": "torch.optim.Adam", "lr": 2e-4, "backbone_lr": 2e-5}})
    return module


def loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def plain_loop(dataset: Dataset, batch_size: int, steps: int, warmup: int, seed: int) -> float:
    module = make_module(seed)
    optimizer = module.configure_optimizers()
    module.train()
    start = None
    for i, batch in enumerate(loader(dataset, batch_size, seed)):
        if i == warmup:
            start = time.perf_counter()
        if i == warmup + steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = module._shared_step(batch)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def lightning_loop(dataset: Dataset, batch_size: int, steps: int, warmup: int, seed: int) -> float:
    module = make_module(seed)
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader(dataset, batch_size, seed))
    return timer.end - timer.start


def loading_rate(dataset: Dataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--load-images", type=int, default=300)
    parser.add_argument("--data-root", default=DATA_ROOT)
    parser.add_argument("--note", default="", help="conditions of the measurement, recorded with the results")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "framework_overhead.json")
    args = parser.parse_args()

    cxr = Path(args.data_root) / "cxr_landmarks"
    cache = Path(os.environ.get("STUDYKIT_CACHE_DIR", ROOT / ".cache")) / "cxr_landmarks"
    status = prepare_cxr_landmarks(cxr, cache, splits=SPLITS)
    tensors = safe_torch_load(status.path / "train.pt")
    dataset = LandmarkDataset(tensors, args.input_size, True, AUGMENT, PAIRS)

    plain, lightning = [], []
    for r in range(args.repeats):
        # alternate which loop goes first, so a trend in machine load favours neither
        order = (("plain", plain_loop, plain), ("lightning", lightning_loop, lightning))
        for _, loop, times in order if r % 2 == 0 else order[::-1]:
            times.append(loop(dataset, args.batch_size, args.steps, args.warmup, seed=r))
        print(f"repeat {r}: plain {plain[-1]:.2f} s, lightning {lightning[-1]:.2f} s for {args.steps} steps", flush=True)
    images = args.steps * args.batch_size
    plain_s, lightning_s = statistics.median(plain), statistics.median(lightning)

    paths = [cxr / "dataset" / i.rsplit("-", 1)[0].replace(" ", "_") / f"{i}.png" for i in tensors["image_id"]]
    cached = LandmarkDataset(tensors, args.input_size, True, AUGMENT, PAIRS)
    decoded = PngDataset(paths, {**tensors, "images": tensors["images"].clone()}, args.input_size, True, AUGMENT, PAIRS)
    n = min(args.load_images, len(paths))
    cache_rate = statistics.median(loading_rate(cached, n) for _ in range(3))
    png_rate = statistics.median(loading_rate(decoded, n) for _ in range(3))

    result = {
        "benchmark": "framework overhead: Lightning vs plain PyTorch training loop; .pt cache vs PNG decoding",
        **script_provenance(),
        "model": "resnet18 (random init) + seed head, wing loss, Adam with two learning-rate groups",
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "steps_timed": args.steps,
        "repeats": args.repeats,
        "plain_seconds": plain,
        "lightning_seconds": lightning,
        "plain_images_per_s": images / plain_s,
        "lightning_images_per_s": images / lightning_s,
        "lightning_over_plain_ratio": lightning_s / plain_s,
        "loading_images_per_s": {"pt_cache": cache_rate, "png_decode": png_rate},
        "loading_cache_speedup": cache_rate / png_rate,
        "loading_note": "per item: read image, flip/rotate/brightness-contrast/resize with albumentations, normalize",
        "machine": machine(),
        "note": args.note,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("plain_images_per_s", "lightning_images_per_s", "lightning_over_plain_ratio",
                                              "loading_images_per_s", "loading_cache_speedup")}, indent=2))


if __name__ == "__main__":
    main()
