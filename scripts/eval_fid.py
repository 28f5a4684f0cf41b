"""Fréchet distance between a sampler's output and reference statistics; prints it, writes JSON.

    python scripts/eval_fid.py sampler=dpmpp_2m steps=10                 # FD-digits, 2000 samples
    python scripts/eval_fid.py model=gmm extractor=raw reference=analytic sampler=heun nfe=9
    python scripts/eval_fid.py model=digits_cond guidance_scale=2 nfe=5  # and class-accuracy (the digits classifier)
    accelerate launch --multi_gpu --num_processes 2 scripts/eval_fid.py  # the same samples, split
"""
import json
import logging
import time
from pathlib import Path

import hydra

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, accelerator_for, counted, one_line_errors, record_config
from fewstep.cli.sampling import from_config, skip_tuning_for
from fewstep.cli.setup import reference
from fewstep.evaluation import get_extractor, statistics_of
from fewstep.evaluation.classifier import ClassHits
from fewstep.evaluation.fid import fd_to

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
@one_line_errors
def main(cfg):
    acc, device = accelerator_for(cfg.device)
    run = from_config(cfg, device)
    extractor = get_extractor(cfg.extractor, cfg.extractor_weights).to(device)
    stats_ref = reference(cfg, run.model, extractor, run.shape, acc, device)
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    start = time.perf_counter()
    sample_fn = run.sample_fn
    if run.cond is not None and cfg.extractor == "digits":  # the classifier behind FD-digits also reads the class
        sample_fn = ClassHits(sample_fn, extractor.net, lambda s: run.cond(s)["class_labels"], device)
    with skip_tuning_for(cfg, run.model, run.planned_nfe or 0) as tuning:
        if tuning is not None:
            log.info(tuning)
        stats = statistics_of(sample_fn, seeds, extractor, acc, cfg.batch_size, device)
    fd = fd_to(stats_ref, stats)
    result = {"fd": fd, "extractor": cfg.extractor, "reference": cfg.reference, "num_samples": int(stats.n),
              "model": str(cfg.model.get("path", cfg.model._target_)), "sampler": run.name, "options": run.options,
              "steps": run.steps, "nfe": run.sample_fn.nfe, "schedule": cfg.schedule.kind.value,
              "sigmas": [float(s) for s in run.sigmas],
              "num_processes": acc.num_processes, "seconds": round(time.perf_counter() - start, 2), **run.metadata}
    if isinstance(sample_fn, ClassHits):
        result.update(class_accuracy=sample_fn.accuracy(acc), classes=run.conditioning["classes"])
    if acc.is_main_process:
        out = Path(cfg.out_dir) / f"fd-{cfg.extractor}-{run.name}-steps{run.steps}.json"
        record_config(cfg)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log.info(f"FD-{cfg.extractor} {fd:.4f} ({run.name}, {counted(run.steps, 'step')}, NFE {result['nfe']:g}, "
                 f"{int(stats.n)} samples)")
        if "class_accuracy" in result:
            log.info(f"class-accuracy {result['class_accuracy']:.4f} (the digits classifier's class is the one asked "
                     f"for)")
        log.info(f"wrote {out}")


if __name__ == "__main__":
    main()
