"""The tables this toolkit is judged by: quality against NFE for every sampler.

    python scripts/benchmark.py --suite gmm --num-samples 2000   # -> runs/benchmark/<time>/ (its own BENCHMARKS.md)
    python scripts/benchmark.py --update-tracked                 # all suites -> the checkout's benchmarks/, BENCHMARKS.md

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
against diffusers' flow-matching schedulers on a shifted flow with an exact smooth velocity: the ODE error),
`frontier` (the few-step frontier: for digits_ddpm, digits_rf1 and digits_rf2 with the one-step generators
distilled from it, at each NFE 1-10 the best of every classic sampler on the default and the searched grid,
AMED with the model's predictors, the learned solver, Skip-Tuning and the one-step generators, chosen by
FD-digits on --tuning-samples seeds from --tuning-seed and scored on --num-samples seeds of each
--held-out-seeds range: FD-digits and KID, mean ± std, the ratio to converged sampling on the same seeds;
and the same choice on the 2-D mixture by the exact ODE error). Schedules: Karras (rho 7) over the model's range
by default; --schedule, --rho, --sigma-min, --sigma-max and --final-sigmas-type change the grid.

Results go to a new folder under runs/benchmark/ (or --out-dir, its report --report); only
--update-tracked rewrites the shipped results, benchmarks/ and BENCHMARKS.md of the checkout it runs in.
"""
import argparse
import inspect
import time
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
             "repeats": args.repeats, "guidance_scale": args.guidance_scale, "tuning_seed": args.tuning_seed,
             "tuning_samples": args.tuning_samples, "held_out_seeds": args.held_out_seeds,
             "grid": {"kind": args.schedule, "rho": args.rho, "sigma_min": args.sigma_min,
                      "sigma_max": args.sigma_max, "final_sigmas_type": args.final_sigmas_type}}
    accepted = inspect.signature(suite).parameters
    return {key: value for key, value in given.items() if key in accepted and value is not None}


TRACKED = (Path("benchmarks"), Path("BENCHMARKS.md"))  # the shipped results, relative to the checkout


def destination(args, parser) -> tuple[Path, Path]:
    """The results folder and report of a run: the tracked ones with --update-tracked (from the
    checkout only), else --out-dir (default a new runs/benchmark/<time>/) and --report (default in it)."""
    if args.update_tracked:
        if args.out_dir is not None or args.report is not None:
            parser.error("--update-tracked writes benchmarks/ and BENCHMARKS.md; it takes no --out-dir or --report")
        if not TRACKED[1].is_file():
            parser.error(f"--update-tracked rewrites the checkout's {TRACKED[1]}; there is none in {Path.cwd()}: "
                         f"run it from the checkout")
        return TRACKED
    out_dir = args.out_dir or Path("runs") / "benchmark" / time.strftime("%Y-%m-%d_%H-%M-%S")
    return out_dir, args.report or out_dir / TRACKED[1].name


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--samplers", nargs="+", choices=list(dict.fromkeys(SAMPLERS + AMED_SAMPLERS)), default=None,
                        help="default: ddim euler heun dpmpp_2m ipndm (gmm, digits, schedules), euler dpmpp_2m "
                             "ipndm (reflow suites), those and dpm_2 amed amed_plugin but euler (amed), ddim euler "
                             "heun dpmpp_2m ipndm dpm_2 (frontier)")
    parser.add_argument("--nfe", nargs="+", type=int, default=None,
                        help=f"default: {NFE_TARGETS} (gmm, digits), {REFLOW_NFE} (reflow suites), 1-10 (frontier)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="default: 10000 (gmm), 2000 (digits, reflow, frontier: per range), 5000 (reflow-2d)")
    parser.add_argument("--dopri5", nargs="*", default=["digits_ddpm", "digits_rf1", "digits_rf2"],
                        help="reflow: the models also sampled with dopri5 (slow: hundreds of NFE)")
    parser.add_argument("--steps-2d", type=int, default=4000, help="reflow-2d: 1-RF training steps (half for the others)")
    parser.add_argument("--gan-steps", type=int, default=12000, help="gan-2d: training steps of each GAN")
    parser.add_argument("--gan-runs", nargs="*", default=[], help="gan-digits: GAN run directories to evaluate too")
    parser.add_argument("--gmm-samples", type=int, default=10000,
                        help="schedules, amed, frontier (per range): noises of the mixture")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=100_000, help="first seed (away from the calibration's 0-999)")
    parser.add_argument("--held-out-seeds", nargs="+", type=int, default=None,
                        help="frontier: the first seed of each held-out range (default: 100000 200000 300000)")
    parser.add_argument("--tuning-seed", type=int, default=None,
                        help="frontier: the first tuning seed (default 900000)")
    parser.add_argument("--tuning-samples", type=int, default=None,
                        help="frontier: tuning seeds (default --num-samples)")
    parser.add_argument("--repeats", type=int, default=3, help="fd-speed repetitions")
    parser.add_argument("--schedule", choices=["karras", "logsnr", "time_uniform", "flow_uniform"], default="karras")
    parser.add_argument("--rho", type=float, default=7.0, help="karras only")
    parser.add_argument("--sigma-min", type=float, default=None, help="default: the model's own")
    parser.add_argument("--sigma-max", type=float, default=None, help="default: the model's own")
    parser.add_argument("--final-sigmas-type", choices=["zero", "sigma_min"], default="zero",
                        help="zero: a last step to 0; sigma_min: the sample returned at sigma_min")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance, for the suites of a conditional model (refused by the others)")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: a new runs/benchmark/<time>/")
    parser.add_argument("--report", type=Path, default=None, help="default: BENCHMARKS.md in the out-dir")
    parser.add_argument("--update-tracked", action="store_true",
                        help="write the shipped results: benchmarks/ and BENCHMARKS.md of the checkout (the current folder)")
    args = parser.parse_args()
    unguided = [suite for suite in args.suite if "guidance_scale" not in inspect.signature(SUITES[suite]).parameters]
    if args.guidance_scale is not None and unguided:
        parser.error(f"--guidance-scale {args.guidance_scale:g} needs a conditional model; {'suite' if len(unguided) == 1 else 'suites'} "
                     f"{', '.join(unguided)} {'samples' if len(unguided) == 1 else 'sample'} unconditional models")
    out_dir, report = destination(args, parser)
    for suite in args.suite:
        SUITES[suite](out_dir, **suite_options(SUITES[suite], args))
    print(f"wrote the results to {out_dir}/ and the report {assemble(out_dir, report)}"
          + ("" if args.update_tracked else " (the shipped results change only with --update-tracked)"))


if __name__ == "__main__":
    main()
