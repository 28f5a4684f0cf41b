"""Train the FD-digits classifier and save it to assets/digits_classifier/model.safetensors.

    python scripts/train_digits_classifier.py [--steps 1500] [--out assets/digits_classifier]
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from fewstep.assets import path as asset_path
from fewstep.evaluation.classifier import train_digits_classifier
from fewstep.training.data import digits


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: the shipped assets/digits_classifier")
    args = parser.parse_args()
    out = args.out or asset_path("digits_classifier")
    net, accuracy = train_digits_classifier(digits(), torch.as_tensor(load_digits().target), steps=args.steps,
                                            seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "metrics.json").write_text(json.dumps({"held_out_accuracy": accuracy, "steps": args.steps,
                                                  "seed": args.seed}, indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.4f}; wrote {out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
