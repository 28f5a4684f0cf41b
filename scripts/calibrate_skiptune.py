"""Find the Skip-Tuning factors of a model and sampler by Fréchet distance, for several NFEs.

    python scripts/calibrate_skiptune.py sampler=heun nfes=[5,9] rho_top_grid=[0.9,1.0]   # prints the curve only
    python scripts/calibrate_skiptune.py sampler=ddim write=true    # stores them beside the model: skiptune/ddim.json
    python scripts/calibrate_skiptune.py sampler=ddim write=true table=runs/ddim-skiptune.json   # or there
    python scripts/calibrate_skiptune.py model=digits_cond guidance_scale=2 sampler=ddim write=true   # skiptune/ddim-cfg2.json
"""
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from fewstep import samplers
from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, accelerator_for, counted, one_line_errors, record_config
from fewstep.cli.conditioning import refuse_prompts
from fewstep.cli.sampling import from_config
from fewstep.cli.setup import reference
from fewstep.evaluation import get_extractor
from fewstep.tuning import skiptune_tables
from fewstep.tuning.calibration import best_factors, scan

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


def table_path(cfg, model) -> Path:
    """Where write=true stores the factors: `table=`, else beside the model (refused if it has no directory)."""
    if cfg.table is not None:
        path = Path(cfg.table).expanduser()
    else:
        path = skiptune_tables.default_path(model, cfg.sampler.name)
        if path is None:
            raise ValueError(f"{type(model).__name__} was not loaded from a directory: give write=true a table=FILE")
    if path.is_dir():
        raise ValueError(f"table={path} is a directory; give the path of a .json file")
    return path


@hydra.main(config_path=CONFIG_PATH, config_name="calibrate", version_base="1.3")
@one_line_errors
def main(cfg):
    refuse_prompts(cfg, "calibrate_skiptune.py")
    name = cfg.sampler.name
    if name not in samplers.FIXED_GRID_NAMES:  # an adaptive sampler has no NFE to calibrate for
        raise ValueError(f"Skip-Tuning is calibrated for fixed-grid samplers, got {name!r}")
    if cfg.table is not None and not cfg.write:
        raise ValueError(f"table={cfg.table} is only written with write=true")
    acc, device = accelerator_for(cfg.device)
    extractor = get_extractor(cfg.extractor, cfg.extractor_weights).to(device)
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    stats, results, grids, model, path, conditioning = None, {}, {}, None, None, None
    for target in cfg.nfes:
        run = from_config(OmegaConf.merge(cfg, {"nfe": target}), device)
        if run.planned_nfe in results:  # a target that rounds to an NFE already scanned (Heun: odd NFE only)
            continue
        if stats is None:  # the first run: where write=true stores the factors (refused before any sampling)
            path = table_path(cfg, run.model) if cfg.write else None
            stats, model = reference(cfg, run.model, extractor, run.shape, acc, device), run.model
            conditioning = run.conditioning
        grids[run.planned_nfe] = run.lines[0]
        for line in run.lines:
            log.info(line)
        rows = results[run.planned_nfe] = []
        for row in scan(run.sample_fn, run.model, seeds, extractor, stats, cfg.rho_top_grid, cfg.rho_grid, acc,
                        cfg.batch_size, device):
            rows.append(row)
            log.info(f"{name} NFE {run.planned_nfe} ({counted(run.steps, 'step')}) rho_top {row['rho_top']} "
                     f"rho_bottom {row['rho_bottom']}: FD-{cfg.extractor} {row['fd']:.3f}")
    if not acc.is_main_process:
        return
    out = record_config(cfg).parent
    rho_top, by_nfe = best_factors(results)
    log.info(f"best factors: rho_top {rho_top}, " + ", ".join(f"NFE {n}: rho_bottom {e['rho_bottom']} (FD {e['fd']:.3f})"
                                                              for n, e in by_nfe.items()))
    scans = out / f"calibration-{name}.json"
    scans.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    log.info(f"wrote {scans}")
    if cfg.write:
        command = "python scripts/calibrate_skiptune.py " + " ".join(sys.argv[1:])
        entries = {nfe: {**entry, "grid": grids[nfe], "command": command} for nfe, entry in by_nfe.items()}
        objective = f"FD-{cfg.extractor}, {cfg.num_samples} samples from seed {cfg.seed}"
        log.info(f"wrote {skiptune_tables.write(path, model, name, HydraConfig.get().runtime.choices.model, objective, rho_top, entries, conditioning)}")


if __name__ == "__main__":
    main()
