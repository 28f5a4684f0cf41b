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
import torch
from omegaconf import OmegaConf

from fewstep import samplers
from fewstep.scripts._cli import CONFIG_PATH, config_dir, one_line_errors, resolve_device, sampling_setup
from fewstep.evaluation import get_extractor
from fewstep.evaluation.fid import accumulate, data_stats, fd_to
from hydra.utils import instantiate


def table_path(cfg, name) -> Path:
    if cfg.table is None:
        return config_dir() / "sampler" / f"{name}+skiptune.yaml"
    return Path(cfg.table).expanduser()


TEMPLATE = """\
# {name} with Skip-Tuning (samplers.skip_tuning): the UNet's skips scaled from rho_top (outermost)
# to rho_bottom (innermost), linear in depth. rho_bottom null: the calibrated value at the nearest
# NFE of by_nfe (ties: the smaller); override with sampler.skip.rho_bottom=0.7 (and sampler.skip.rho_top, sampler.skip.sigma_range).
# by_nfe was calibrated on model={model} ({num_samples} samples, FD-{extractor}) by
#   {command}
# FD per NFE without Skip-Tuning -> with the chosen factors: {summary}
defaults:
  - {name}
  - _self_

skip:
  rho_top: {rho_top}
  rho_bottom: null
  sigma_range: null
  by_nfe:
{table}
"""


def write_config(name, results, cfg, path):
    best = {nfe: min(rows, key=lambda r: r["fd"]) for nfe, rows in results.items()}
    plain = {nfe: next(r["fd"] for r in rows if r["rho_top"] == 1.0 and r["rho_bottom"] == 1.0)
             for nfe, rows in results.items() if any(r["rho_top"] == r["rho_bottom"] == 1.0 for r in rows)}
    tops = {b["rho_top"] for b in best.values()}
    if len(tops) > 1:  # one rho_top per file: keep the commonest, re-pick rho_bottom under it
        top = max(tops, key=lambda t: sum(b["rho_top"] == t for b in best.values()))
        best = {nfe: min((r for r in rows if r["rho_top"] == top), key=lambda r: r["fd"]) for nfe, rows in results.items()}
    summary = ", ".join(f"NFE {nfe}: {plain[nfe]:.2f} -> {best[nfe]['fd']:.2f}" for nfe in best if nfe in plain)
    table = "\n".join(f"    {nfe}: {best[nfe]['rho_bottom']}" for nfe in sorted(best))
    command = "python scripts/calibrate_skiptune.py " + " ".join(sys.argv[1:])
    model = HydraConfig.get().runtime.choices.model
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.format(name=name, model=model, num_samples=cfg.num_samples, extractor=cfg.extractor, command=command,
                                    summary=summary, rho_top=next(iter(best.values()))["rho_top"], table=table))
    return path


@hydra.main(config_path=CONFIG_PATH, config_name="calibrate", version_base="1.3")
@one_line_errors
def main(cfg):
    device = resolve_device(cfg.device)
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    if name not in samplers.solvers.FIXED_GRID:
        raise ValueError(f"Skip-Tuning is calibrated for fixed-grid samplers, got {name!r}")
    if cfg.table is not None and not cfg.write:
        raise ValueError(f"table={cfg.table} is only written with write=true")
    path = table_path(cfg, name)
    if cfg.write and path.is_dir():
        raise ValueError(f"table={path} is a directory; give the path of a .yaml file")
    extractor = get_extractor(cfg.extractor, cfg.extractor_weights).to(device)
    reference = data_stats(instantiate(cfg.data), extractor, device=device)
    results = {}
    for target in cfg.nfes:
        run_cfg = OmegaConf.merge(cfg, {"nfe": target})
        denoiser, shape, steps, sigmas = sampling_setup(run_cfg, device)
        seeds = range(cfg.seed, cfg.seed + cfg.num_samples)
        rows = []
        for rho_top in cfg.rho_top_grid:
            for rho_bottom in cfg.rho_grid:
                with samplers.skip_tuning(denoiser, rho_top, rho_bottom), torch.no_grad():
                    batches = samplers.sample_seeds(name, denoiser, seeds, sigmas, shape, cfg.batch_size, device,
                                                    **options)
                    fd = fd_to(reference, accumulate(batches, extractor, device))
                rows.append({"rho_top": rho_top, "rho_bottom": rho_bottom, "fd": fd})
                print(f"{name} NFE {samplers.nfe(name, sigmas, **options)} ({steps} steps) rho_top {rho_top} "
                      f"rho_bottom {rho_bottom}: FD-{cfg.extractor} {fd:.3f}", flush=True)
        results[samplers.nfe(name, sigmas, **options)] = rows
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"calibration-{name}.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    if cfg.write:
        print(f"wrote {write_config(name, results, cfg, path)}")


if __name__ == "__main__":
    main()
