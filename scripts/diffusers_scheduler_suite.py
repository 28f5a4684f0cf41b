"""Run diffusers' OWN scheduler tests against `FewstepScheduler`: a compatibility report, not a
pass/fail gate (many of diffusers' tests exercise an option only one diffusers scheduler has, or
compare against hard-coded numbers of that scheduler's algorithm).

Get a diffusers checkout (only `tests/` is used; the `diffusers` that runs is the installed one):

    git clone --depth 1 https://github.com/huggingface/diffusers /tmp/diffusers
    # or, lighter: git clone --depth 1 --filter=blob:none --sparse https://github.com/huggingface/diffusers /tmp/diffusers
    #             git -C /tmp/diffusers sparse-checkout set tests/schedulers tests/others

and run, from anywhere, in the project's virtualenv (pytest is a dev dependency):

    python scripts/diffusers_scheduler_suite.py --diffusers /tmp/diffusers
    python scripts/diffusers_scheduler_suite.py --diffusers /tmp/diffusers --sampler heun -k full_loop
    python scripts/diffusers_scheduler_suite.py --diffusers /tmp/diffusers --suite common --schedule discrete -v

`--diffusers` is the directory that contains `tests/schedulers` (the clone's root); it can also be
given as the environment variable DIFFUSERS_CHECKOUT. The checkout's tests should match the installed
diffusers' version (a newer checkout may import names the installed diffusers lacks: that suite is
then reported as not importable; an older one is usually fine). The versions are printed.

How it works: the checkout's `tests` folder is imported as the package `_diffusers_tests` (its
`conftest.py` is NOT loaded: it would put the checkout's `src/` in front of the installed diffusers).
For every suite below a subclass of diffusers' test class is made with
`scheduler_classes = (FewstepScheduler,)` and a `get_scheduler_config(**kwargs)` that returns a VP
config for FewstepScheduler: the config the diffusers scheduler under test would have with diffusers'
test config (its full `.config`, defaults included), reduced to FewstepScheduler's keys that differ
from FewstepScheduler's defaults (so `timestep_spacing="linspace"` and DDIM's `clip_sample=True`
come along, DPM-Solver's `solver_order` does not), plus `sampler` and `schedule`; the keywords a test
passes are then added verbatim, so a test of an option FewstepScheduler lacks fails with "unexpected keyword argument".
The subclasses are collected by pytest from a generated one-line module in a temporary directory
(with its own empty pytest.ini, so neither this project's nor diffusers' pytest config applies).

Suites (`--suite` picks by name prefix, `--sampler` by sampler; `-k` is pytest's):
    common-<sampler>   SchedulerCommonTest (the tests every diffusers scheduler passes), for each of
                       ddim, euler, heun, dpmpp_2m, ipndm, on a linear 1000-step table with
                       `--schedule` (default karras, FewstepScheduler's default)
    common-flow-<sampler>  the same in flow-matching mode (prediction_type="flow_prediction", the
                       flow_uniform grid: FlowMatchEulerDiscreteScheduler's); test_trained_betas does
                       not apply (a flow has no betas)
    ddim               DDIMSchedulerTest                  sampler=ddim      schedule=discrete
    dpm_multi          DPMSolverMultistepSchedulerTest    sampler=dpmpp_2m  schedule=discrete
    euler              EulerDiscreteSchedulerTest         sampler=euler     schedule=discrete
    heun               HeunDiscreteSchedulerTest          sampler=heun      schedule=discrete
    ipndm              IPNDMSchedulerTest                 sampler=ipndm     schedule=discrete

Prints, per suite, passed / failed / errors / skipped and each failure's name with a one-line reason
(`-v` for pytest's own output with tracebacks); exits 1 if anything failed. A whole run takes seconds.
Many failures are expected and do not apply (README.md lists each): tests of an option FewstepScheduler
does not have (solver_order, use_karras_sigmas, lower_order_final, ...), hard-coded
results of another algorithm or convention (IPNDMScheduler's own schedule; Euler/Heun full loops that
feed `scale_model_input`'s output back into `step`, which only a sigma-space scheduler notices), and
DDIMScheduler's stateless `step()` at timesteps outside the plan. Without torchsde, test_compatibles
fails everywhere (DPMSolverSDEScheduler is a compatible), diffusers' own suites included.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from fewstep.suites.diffusers_tests import SAMPLERS, SUITES, report, run_tests, versions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=textwrap.dedent(__doc__.split("\n\n", 1)[1]))
    parser.add_argument("--diffusers", type=Path, default=os.environ.get("DIFFUSERS_CHECKOUT"),
                        help="root of a diffusers checkout (contains tests/schedulers); env DIFFUSERS_CHECKOUT")
    parser.add_argument("--suite", action="append", default=None,
                        help=f"suite name or prefix, repeatable ({', '.join(SUITES)}); default all")
    parser.add_argument("--sampler", action="append", choices=SAMPLERS, default=None,
                        help="only the suites of this sampler, repeatable")
    parser.add_argument("--schedule", default="karras", choices=("karras", "logsnr", "time_uniform", "discrete"),
                        help="schedule of the common-* suites (default karras)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression (test names)")
    parser.add_argument("-v", "--verbose", action="store_true", help="pytest's own verbose output and tracebacks")
    args = parser.parse_args(argv)
    if args.diffusers is None:
        parser.error("give --diffusers PATH (a diffusers clone: git clone --depth 1 https://github.com/huggingface/diffusers)")
    names = [name for name in SUITES
             if (args.suite is None or any(name.startswith(prefix) for prefix in args.suite))
             and (args.sampler is None or SUITES[name][2] in args.sampler)]
    if not names:
        parser.error("no suite matches --suite/--sampler")
    checkout = args.diffusers.resolve()
    print(versions(checkout))
    try:
        results, broken = run_tests(checkout, names, args.schedule, args.keyword, args.verbose)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    text, failed = report(names, args.schedule, results, broken)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
