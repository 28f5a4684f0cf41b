"""Find the Skip-Tuning factors of a model and sampler by Fréchet distance, for several NFEs.

    python scripts/calibrate_skiptune.py sampler=heun nfes=[5,9] rho_top_grid=[0.9,1.0]   # prints the curve only
    python scripts/calibrate_skiptune.py sampler=ddim write=true    # writes conf/sampler/ddim+skiptune.yaml
    python scripts/calibrate_skiptune.py sampler=ddim write=true table=runs/ddim+skiptune.yaml   # or there
"""
import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from fewstep import samplers
from fewstep.evaluation import config as _schema  # noqa: F401  (registers calibrate_schema, which conf/calibrate.yaml names)
from fewstep.evaluation import get_extractor
from fewstep.evaluation.calibration import best_factors, scan
from fewstep.evaluation.generators import from_config
from fewstep.evaluation.reference import reference_stats
from fewstep.samplers.skip_tuning import table_path, write_table
from fewstep.scripts._cli import CONFIG_PATH, accelerator_for, one_line_errors


@hydra.main(config_path=CONFIG_PATH, config_name="calibrate", version_base="1.3")
@one_line_errors
def main(cfg):
    name = cfg.sampler.name
    if name not in samplers.FIXED_GRID_NAMES:  # an adaptive sampler has no NFE to calibrate for
        raise ValueError(f"Skip-Tuning is calibrated for fixed-grid samplers, got {name!r}")
    if cfg.table is not None and not cfg.write:
        raise ValueError(f"table={cfg.table} is only written with write=true")
    path = table_path(name, cfg.table)
    if cfg.write and path.is_dir():
        raise ValueError(f"table={path} is a directory; give the path of a .yaml file")
    acc, device = accelerator_for(cfg.device)
    extractor = get_extractor(cfg.extractor, cfg.extractor_weights).to(device)
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    reference, results, grids = None, {}, {}
    for target in cfg.nfes:
        run = from_config(OmegaConf.merge(cfg, {"nfe": target}), device)
        if run.planned_nfe in results:  # a target that rounds to an NFE already scanned (Heun: odd NFE only)
            continue
        if reference is None:
            reference = reference_stats(cfg, run.model, extractor, acc, device)
        grids[run.planned_nfe] = run.lines[0]
        rows = results[run.planned_nfe] = []
        for row in scan(run.sample_fn, run.model, seeds, extractor, reference, cfg.rho_top_grid, cfg.rho_grid, acc,
                        cfg.batch_size, device):
            rows.append(row)
            acc.print(f"{name} NFE {run.planned_nfe} ({run.steps} steps) rho_top {row['rho_top']} "
                      f"rho_bottom {row['rho_bottom']}: FD-{cfg.extractor} {row['fd']:.3f}", flush=True)
    if not acc.is_main_process:
        return
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"calibration-{name}.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    if cfg.write:
        rho_top, by_nfe, summary = best_factors(results)
        provenance = [f"by_nfe was calibrated on model={HydraConfig.get().runtime.choices.model} ({cfg.num_samples} "
                      f"samples, FD-{cfg.extractor}) by",
                      "  python scripts/calibrate_skiptune.py " + " ".join(sys.argv[1:]),
                      f"FD per NFE without Skip-Tuning -> with the chosen factors: {summary}",
                      *(f"NFE {nfe} {line}" for nfe, line in grids.items())]
        print(f"wrote {write_table(path, name, rho_top, by_nfe, provenance)}")


if __name__ == "__main__":
    main()
