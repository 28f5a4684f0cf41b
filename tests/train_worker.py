"""Run as a subprocess by test_training.py (also under `accelerate launch`): train the tiny UNet
on digits for STEPS steps in OUT/run, checkpointing every CHECKPOINT_EVERY steps (resuming from
the latest checkpoint there), then write each process's parameters to OUT/rank<i>.safetensors.

    python tests/train_worker.py OUT STEPS CHECKPOINT_EVERY
"""
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from conftest import tiny_unet
from fewstep.flows import DiffusionObjective
from fewstep.training import Trainer
from fewstep.training.data import digits

out, steps, every = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
trainer = Trainer(tiny_unet(), DiffusionObjective(), digits(image_size=8)[:256], out_dir=out / "run", steps=steps,
                  batch_size=16, lr=1e-3, checkpoint_every=every, log_every=2)
trainer.fit()
rank = trainer.accelerator.process_index
params = {k: v.detach().cpu().contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
params.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in trainer.ema_model().state_dict().items()})
save_file(params, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"num_processes": trainer.accelerator.num_processes,
                                                  "batch_shape": list(next(iter(trainer.loader)).shape)}))
