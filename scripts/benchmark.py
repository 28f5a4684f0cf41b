"""The tables this toolkit is judged by: quality against NFE for every sampler.

    python scripts/benchmark.py                              # all suites -> benchmarks/*.md, BENCHMARKS.md
    python scripts/benchmark.py --suite gmm --num-samples 2000

Suites: `gmm` (the analytic 2-D mixture: exact Fréchet distance to the true distribution, and the
mean distance to the exact ODE solution from the same noise), `digits` (FD-digits of the embedded
model against the 1797 digits, plus sample grids at 5 NFE), `reflow` (FD-digits of the shipped
rectified flows digits_rf1, digits_rf2 and digits_rf_1step beside the DDPM at 1-10 NFE, dopri5,
straightness), `reflow-2d` (1-RF, 2-RF and a distilled one-step flow trained here on 2-D moons and
checkerboard: FD to fresh data, straightness, trajectory pictures), `gan-2d` (the ReFlow-derived
GAN against WGAN-GP on 8 Gaussians and moons at equal generator updates: modes covered, FD),
`gan-digits` (the shipped one-step generators and given GAN runs: FD-digits on three seed ranges,
FD against generator updates, sample grids),
`schedules` (each sampler at NFE 3-10 on the default grid and on its searched grid: FD-digits, and the
mixture's error against the exact ODE), `amed` (AMED-Solver and AMED-Plugin, learned and frozen, against the
other samplers in the AMED paper's setting and on their own grids: FD-digits, the mixture's ODE error), `fd-speed` (our Fréchet distance against pytorch-fid's on 2048-d statistics), `flow-accuracy` (every sampler
against diffusers' flow-matching schedulers on a shifted flow with an exact smooth velocity: the ODE error). Schedules: Karras (rho 7) over the model's range
by default; --schedule, --rho, --sigma-min, --sigma-max and --final-sigmas-type change the grid.
"""
import argparse
import inspect
from pathlib import Path

from fewstep.evaluation.report import assemble
from fewstep.suites import SUITES
from fewstep.suites.amed import AMED_SAMPLERS
from fewstep.suites.sweep import NFE_TARGETS, REFLOW_NFE, SAMPLERS


def suite_options(suite, args) -> dict:
    """The command-line values `suite` takes as keywords; those not given keep the suite's defaults."""
    given = {"samplers": args.samplers, "nfe": args.nfe, "num_samples": args.num_samples, "seed": args.seed,
             "batch_size": args.batch_size, "dopri5": args.dopri5, "steps_2d": args.steps_2d,
             "gan_steps": args.gan_steps, "gan_runs": args.gan_runs, "gmm_samples": args.gmm_samples,
             "repeats": args.repeats,
             "grid": {"kind": args.schedule, "rho": args.rho, "sigma_min": args.sigma_min,
                      "sigma_max": args.sigma_max, "final_sigmas_type": args.final_sigmas_type}}
    accepted = inspect.signature(suite).parameters
    return {key: value for key, value in given.items() if key in accepted and value is not None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--samplers", nargs="+", choices=list(dict.fromkeys(SAMPLERS + AMED_SAMPLERS)), default=None,
                        help="default: ddim euler heun dpmpp_2m ipndm (gmm, digits, schedules), euler dpmpp_2m "
                             "ipndm (reflow suites), those and dpm_2 amed amed_plugin but euler (amed)")
    parser.add_argument("--nfe", nargs="+", type=int, default=None,
                        help=f"default: {NFE_TARGETS} (gmm, digits), {REFLOW_NFE} (reflow suites)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="default: 10000 (gmm), 2000 (digits, reflow), 5000 (reflow-2d)")
    parser.add_argument("--dopri5", nargs="*", default=["digits_ddpm", "digits_rf1", "digits_rf2"],
                        help="reflow: the models also sampled with dopri5 (slow: hundreds of NFE)")
    parser.add_argument("--steps-2d", type=int, default=4000, help="reflow-2d: 1-RF training steps (half for the others)")
    parser.add_argument("--gan-steps", type=int, default=12000, help="gan-2d: training steps of each GAN")
    parser.add_argument("--gan-runs", nargs="*", default=[], help="gan-digits: GAN run directories to evaluate too")
    parser.add_argument("--gmm-samples", type=int, default=10000, help="schedules: noises of the mixture")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=100_000, help="first seed (away from the calibration's 0-999)")
    parser.add_argument("--repeats", type=int, default=3, help="fd-speed repetitions")
    parser.add_argument("--schedule", choices=["karras", "logsnr", "time_uniform", "flow_uniform"], default="karras")
    parser.add_argument("--rho", type=float, default=7.0, help="karras only")
    parser.add_argument("--sigma-min", type=float, default=None, help="default: the model's own")
    parser.add_argument("--sigma-max", type=float, default=None, help="default: the model's own")
    parser.add_argument("--final-sigmas-type", choices=["zero", "sigma_min"], default="zero",
                        help="zero: a last step to 0; sigma_min: the sample returned at sigma_min")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks"))
    parser.add_argument("--report", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    for suite in args.suite:
        SUITES[suite](args.out_dir, **suite_options(SUITES[suite], args))
    print(f"wrote {assemble(args.out_dir, args.report)}")


if __name__ == "__main__":
    main()
