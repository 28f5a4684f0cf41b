"""Wall time of FewstepScheduler against diffusers' own scheduler for the same sampler, at equal
NFE, inside a tiny random Stable-Diffusion pipeline (milliseconds per UNet call, so the
scheduler's own overhead shows). Runs alternate in one process; each time is the median over the
repetitions. Two ratios ours / diffusers' are given: the ratio of those medians (it agrees with the
time columns) and the median of the per-repetition ratios (paired runs, so a load change on a
shared machine cancels out). Writes a markdown table.

    python scripts/benchmark_schedulers.py benchmarks/schedulers.md [--steps 10] [--repeats 21]

The section lands in BENCHMARKS.md at the next `python scripts/benchmark.py --update-tracked` (or assemble it by hand).

Pairs: ddim / DDIMScheduler, euler / EulerDiscreteScheduler, heun / HeunDiscreteScheduler,
dpmpp_2m / DPMSolverMultistepScheduler (DPM-Solver++, order 2). "scheduler only" times
`set_timesteps` plus every `scale_model_input` and `step` of one generation with a stand-in model
output, per network evaluation.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from fewstep.evaluation.report import section
from fewstep.pipelines import FewstepScheduler
from fewstep.suites.tiny_pipelines import tiny_text_to_image

THEIRS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler,
          "dpmpp_2m": DPMSolverMultistepScheduler}


def time_pipeline(pipe, scheduler, steps: int, guidance_scale: float) -> float:
    pipe.scheduler = scheduler
    start = time.perf_counter()
    pipe("a cat", num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def time_scheduler(scheduler, steps: int) -> tuple[float, int]:
    """Seconds for one generation's scheduler calls with a stand-in model output, and the NFE."""
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    output = 0.1 * sample
    start = time.perf_counter()
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        sample = scheduler.step(output, t, scheduler.scale_model_input(sample, t)).prev_sample
    return time.perf_counter() - start, len(scheduler.timesteps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the markdown file to write")
    parser.add_argument("--steps", type=int, default=10, help="num_inference_steps for every scheduler")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs of each scheduler (median)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="> 1: classifier-free guidance")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the comparison is about per-step overhead; one thread is steadier on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny_text_to_image(tmp)
    pairs = {name: (FewstepScheduler.from_config(pipe.scheduler.config, sampler=name), cls.from_config(pipe.scheduler.config))
             for name, cls in THEIRS.items()}
    times = {(name, side): [] for name in pairs for side in (0, 1)}
    overhead = {(name, side): [] for name in pairs for side in (0, 1)}
    nfe = {}
    for rep in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, pair in pairs.items():
            for side in (0, 1) if rep % 2 else (1, 0):
                pipeline_time = time_pipeline(pipe, pair[side], args.steps, args.guidance_scale)
                scheduler_time, nfe[name, side] = time_scheduler(pair[side], args.steps)
                if rep:
                    times[name, side].append(pipeline_time)
                    overhead[name, side].append(scheduler_time / nfe[name, side])
    rows = ["| sampler | diffusers scheduler | NFE | ours ms (median) | diffusers ms (median) | ratio of the medians "
            "| median of paired ratios | scheduler only: ours µs/NFE (median) | diffusers µs/NFE (median) "
            "| ratio of the medians | median of paired ratios |", "|---" * 11 + "|"]
    for name, (ours, theirs) in pairs.items():
        if nfe[name, 0] != nfe[name, 1]:
            raise RuntimeError(f"{name}: NFE {nfe[name, 0]} against {nfe[name, 1]}; the comparison would be unfair")
        t0, t1, o0, o1 = (statistics.median(runs[name, side]) for runs in (times, overhead) for side in (0, 1))
        paired, overhead_paired = (statistics.median(a / b for a, b in zip(runs[name, 0], runs[name, 1]))
                                   for runs in (times, overhead))
        rows.append(f"| {name} | {type(theirs).__name__} | {nfe[name, 0]} | {1e3 * t0:.2f} | {1e3 * t1:.2f} | "
                    f"{t0 / t1:.3f} | {paired:.3f} | {1e6 * o0:.0f} | {1e6 * o1:.0f} | {o0 / o1:.3f} | "
                    f"{overhead_paired:.3f} |")
    note = (f"Tiny random StableDiffusionPipeline (8x8 latents, batch 1, guidance_scale {args.guidance_scale}, "
            f"output_type latent), {args.steps} steps, medians of {args.repeats} interleaved runs, "
            f"torch {torch.__version__}, 1 thread.")
    text = section("FewstepScheduler against diffusers' own schedulers", "\n".join([note, "", *rows]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
