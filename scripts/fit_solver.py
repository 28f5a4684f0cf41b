"""Fit the learned multistep solver of a model for several NFEs (tuning.learned_solver).

    python scripts/fit_solver.py nfes=[5]                  # prints the fit only
    python scripts/fit_solver.py write=true                # stores the fits next to the model
    python scripts/fit_solver.py model=gmm nfes=[3] write=true table=runs/gmm-learned.json
"""
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, one_line_errors, record_config, resolve_device
from fewstep.cli.setup import model_of
from fewstep.tuning import solver_tables
from fewstep.tuning.learned_solver import run_fits, searched_starts

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


@hydra.main(config_path=CONFIG_PATH, config_name="fit_solver", version_base="1.3")
@one_line_errors
def main(cfg):
    if cfg.table is not None and not cfg.write:
        raise ValueError(f"table={cfg.table} is only written with write=true")
    denoiser = model_of(cfg).to(resolve_device(cfg.device)).eval()
    path = Path(cfg.table).expanduser() if cfg.table is not None else solver_tables.default_path(denoiser)
    if cfg.write and path is None:
        raise ValueError(f"{type(denoiser).__name__} was not loaded from a directory: give write=true a table=FILE")
    if cfg.write and path.is_dir():
        raise ValueError(f"table={path} is a directory; give the path of a .json file")
    command = "python scripts/fit_solver.py " + " ".join(sys.argv[1:])
    model, results = HydraConfig.get().runtime.choices.model, {}
    for fit in run_fits(denoiser, cfg.nfes, cfg.order, cfg.num_noises, cfg.seed, cfg.iterations, cfg.lr, cfg.rtol,
                        cfg.atol, resolve_device(cfg.device), log.info, starts=searched_starts(denoiser, cfg.nfes)):
        log.info(f"learned NFE {fit.nfe}: held-out ODE error {fit.held_out_error:.5f} against "
                 f"{fit.start_held_out_error:.5f} for dpmpp_2m on {fit.start_how}, {fit.seconds:.0f} s"
                 + ("" if fit.kept else ": not kept (no better on the held-out noises)"))
        results[fit.nfe] = {"sigmas": fit.sigmas.tolist(), "weights": fit.weights.tolist(), **fit.record()}
        if cfg.write and fit.kept:
            solver_tables.write(path, denoiser, model, fit, command=command)
    out = record_config(cfg).parent
    (out / "fit-learned.json").write_text(json.dumps(results, indent=1) + "\n")
    log.info(f"wrote {out / 'fit-learned.json'}" + (f" and {path}" if cfg.write else ""))


if __name__ == "__main__":
    main()
