"""Collect the torchrun benchmark runs into docs/evidence/torchrun/finetune_resnet20.json.

Run from the repository root after docs/evidence/torchrun/bench.sh (REPS=1, 2, 3), which writes
runs/torchrun_bench/.
"""

import json
import re
import sys
from pathlib import Path

B = Path("runs/torchrun_bench")
POLICY = "docs/evidence/search/resnet20_ddpg_s0/best_policy.json"
COMMON = (
    f"--model resnet20 --policy {POLICY} --dataset folder "
    "--data ../shared/data/cifar10/cifar10-jpg.tar.gz --finetune-epochs 1"
)
COMMANDS = {
    "1proc_1thread": f"amc apply {COMMON} --threads 1 --out OUT",
    "1proc_2threads": f"amc apply {COMMON} --threads 2 --out OUT",
    "torchrun2_1thread": (f"torchrun --nproc_per_node 2 -m amc.cli apply {COMMON} --threads 1 --out OUT"),
}
log = (B / "bench.log").read_text()
runs = []
for folder in sorted(p for p in B.iterdir() if p.is_dir()):
    config, rep = folder.name.rsplit("_r", 1)
    if not (folder / "metrics.json").exists():
        continue
    history = json.loads((folder / "finetune" / "history.json").read_text())[0]
    finetune = json.loads((folder / "finetune" / "model.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    start = re.search(rf"== {folder.name} (\S+) load (\S+) (\S+) (\S+)", log)
    end = re.search(rf"{folder.name} rc=(\d+) wall=(\S+) load_after (\S+) (\S+) (\S+)", log)
    images = 45000  # CIFAR-10 training images minus the 5000-image search hold-out
    runs.append(
        {
            "config": config,
            "repeat": int(rep),
            "command": COMMANDS[config].replace("OUT", str(folder)),
            "processes": finetune.get("processes", 1),
            "threads_per_process": finetune["train"]["threads"],
            "train_images": images,
            "batch_size": finetune["train"]["batch_size"],
            "epoch_seconds": history["seconds"],
            "images_per_second": round(images / history["seconds"], 1),
            "finetune_train_loss": round(history["loss"], 4),
            "finetune_train_acc": history["acc"],
            "finetuned_test_top1": finetune["test_top1"],
            "pruned_test_top1_cli": metrics["pruned_top1"],
            "dense_test_top1": metrics["dense_top1"],
            "flops_ratio": metrics.get("flops_ratio"),
            "command_wall_seconds": round(float(end.group(2)), 1) if end else None,
            "started": start.group(1) if start else None,
            "load_average_1_5_15_before": [float(x) for x in start.groups()[1:]] if start else None,
            "load_average_1_5_15_after": [float(x) for x in end.groups()[2:]] if end else None,
        }
    )
summary = {}
for config in COMMANDS:
    mine = [r for r in runs if r["config"] == config]
    rates = sorted(r["images_per_second"] for r in mine)
    summary[config] = {
        "runs": len(mine),
        "images_per_second_median": rates[len(rates) // 2] if rates else None,
        "images_per_second_range": [rates[0], rates[-1]] if rates else None,
        "finetuned_test_top1": sorted({r["finetuned_test_top1"] for r in mine}),
    }
speedups = {}
for rep in sorted({r["repeat"] for r in runs}):
    by = {r["config"]: r["images_per_second"] for r in runs if r["repeat"] == rep}
    if len(by) == 3:
        speedups[f"repeat {rep}"] = {
            "torchrun2_vs_1proc_1thread": round(by["torchrun2_1thread"] / by["1proc_1thread"], 2),
            "torchrun2_vs_1proc_2threads": round(by["torchrun2_1thread"] / by["1proc_2threads"], 2),
        }
out = Path("docs/evidence/torchrun/finetune_resnet20.json")
out.parent.mkdir(parents=True, exist_ok=True)
doc = {
    "what": "amc apply --finetune-epochs 1 of the shipped ResNet-20 pruned by a committed DDPG policy "
    "(FLOPs 0.499), one epoch on CIFAR-10 (45000 training images, batch 128, lr 0.01), "
    "one process vs torchrun with 2 processes",
    "machine": "2 cores (AMD EPYC), no GPU, shared with other jobs (see load averages)",
    "torch": __import__("torch").__version__,
    "note": "epoch_seconds is the training pass alone (history.json)",
    "summary": summary,
    "speedups": speedups,
    "runs": runs,
}
out.write_text(json.dumps(doc, indent=1) + "\n")
json.dump(runs, sys.stdout, indent=1)
