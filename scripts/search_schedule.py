"""Search the sigma grid of a model and sampler for several NFEs (tuning.schedule_search).

    python scripts/search_schedule.py sampler=dpmpp_2m nfes=[5]          # prints the curve only
    python scripts/search_schedule.py sampler=dpmpp_2m write=true         # stores the grids next to the model
    python scripts/search_schedule.py model=gmm sampler=heun write=true table=runs/gmm-heun.json
    python scripts/search_schedule.py model=digits_cond guidance_scale=2 sampler=euler write=true   # schedules/euler-cfg2.json
    python scripts/search_schedule.py model=diffusers model.path=DIR prompts=FILE guidance_scale=7.5 sampler=dpmpp_2m \
        nfes=[5,8] write=true                 # a text-to-image pipeline: DIR/schedules/dpmpp_2m-cfg7.5.json
"""
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, one_line_errors, record_config, resolve_device
from fewstep.cli.conditioning import conditioned
from fewstep.cli.setup import model_of
from fewstep.tuning import schedule_tables
from fewstep.tuning.schedule_search import run_search

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


@hydra.main(config_path=CONFIG_PATH, config_name="search_schedule", version_base="1.3")
@one_line_errors
def main(cfg):
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    learned = options.pop("predictor", None)  # amed's: the search is for fixed r and c
    if learned not in (None, "auto"):
        raise ValueError(f"the search finds grids for fixed r and c; the predictor {learned} keeps its own grid")
    if cfg.sampler.get("skip") is not None:
        raise ValueError(f"search the plain sampler (sampler={name}): a +skiptune sampler samples on its grid")
    if cfg.table is not None and not cfg.write:
        raise ValueError(f"table={cfg.table} is only written with write=true")
    device = resolve_device(cfg.device)
    given = conditioned(cfg, model_of(cfg))
    denoiser = given.denoiser.to(device).eval()
    if given.line is not None:
        log.info(given.line)
    path = Path(cfg.table).expanduser() if cfg.table is not None else schedule_tables.default_path(denoiser, name)
    if cfg.write and path is None:
        raise ValueError(f"{type(denoiser).__name__} was not loaded from a directory: give write=true a table=FILE")
    if cfg.write and path.is_dir():
        raise ValueError(f"table={path} is a directory; give the path of a .json file")
    if cfg.write:
        schedule_tables.check_writable(path, denoiser, name, options)  # before the search, not after it
    command = "python scripts/search_schedule.py " + " ".join(sys.argv[1:])
    model = HydraConfig.get().runtime.choices.model
    results = {}
    for result in run_search(name, denoiser, cfg.nfes, options, cfg.num_noises, cfg.seed, cfg.iterations, cfg.lr,
                             cfg.rtol, cfg.atol, device, cond=given.cond_of(range(cfg.num_noises))):
        best, default = result.best, result.default
        log.info(f"{name} NFE {result.nfe}: {best.how}: held-out ODE error {best.error:.5f}"
                 + (f" (default Karras grid {default.error:.5f})" if default else "")
                 + f", {result.seconds:.0f} s; sigmas {', '.join(f'{s:.4g}' for s in best.sigmas.tolist())}")
        results[result.nfe] = result.record()
        if cfg.write:
            schedule_tables.write(path, denoiser, name, options, model, "ode_error", result.nfe, best.sigmas,
                                  given.record, command=command, **result.record(curve=False))
    out = record_config(cfg).parent
    (out / f"search-{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    log.info(f"wrote {out / f'search-{name}.json'}" + (f" and {path}" if cfg.write else ""))


if __name__ == "__main__":
    main()
