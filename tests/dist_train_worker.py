"""Run by `accelerate launch` from test_training.py: a few steps of training in every process,
then each process writes its own copy of the parameters."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import tiny_unet
from flows import DiffusionObjective
from training import Trainer
from training.data import digits

out = Path(sys.argv[1])
trainer = Trainer(tiny_unet(), DiffusionObjective(), digits(image_size=8)[:256], out_dir=out / "run", steps=4,
                  batch_size=16, lr=1e-3, checkpoint_every=100, log_every=2)
trainer.fit()
rank = trainer.accelerator.process_index
params = {k: v.detach().cpu().contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
save_file(params, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"num_processes": trainer.accelerator.num_processes,
                                                  "batch_shape": list(next(iter(trainer.loader)).shape)}))
