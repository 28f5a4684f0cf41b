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
from FewstepScheduler's defaults (so `timestep_spacing="linspace"` comes along from Euler/Heun/DPM,
`clip_sample` does not), plus `sampler` and `schedule`; the keywords a test passes are then added
verbatim, so a test of an option FewstepScheduler lacks fails with "unexpected keyword argument".
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
Many failures are expected and do not apply: tests of an option FewstepScheduler does not have
(clip_sample, thresholding, solver_order, use_karras_sigmas, final_sigmas_type, ...), hard-coded
results of another algorithm or convention (IPNDMScheduler's own schedule; Euler/Heun full loops that
feed `scale_model_input`'s output back into `step`, which only a sigma-space scheduler notices), and
DDIMScheduler's stateless `step()` at timesteps outside the plan. Without torchsde, test_compatibles
fails everywhere (DPMSolverSDEScheduler is a compatible), diffusers' own suites included.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import textwrap
import types
from collections import defaultdict
from pathlib import Path

PACKAGE = "_diffusers_tests"              # the checkout's tests/ folder, imported under this name
BUILDER = "_fewstep_diffusers_suite"      # this script, as the generated test module imports it
PLAN = {}                                 # what the generated test module builds: set by run()
BROKEN = {}                               # suite name -> why its diffusers test module did not import
SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m", "ipndm")

# name: (test module in tests/schedulers, test class, sampler, schedule or None for --schedule)
SUITES = {**{f"common-{s}": ("test_schedulers", "SchedulerCommonTest", s, None) for s in SAMPLERS},
          **{f"common-flow-{s}": ("test_schedulers", "SchedulerCommonTest", s, "flow_uniform") for s in SAMPLERS},
          "ddim": ("test_scheduler_ddim", "DDIMSchedulerTest", "ddim", "discrete"),
          "dpm_multi": ("test_scheduler_dpm_multi", "DPMSolverMultistepSchedulerTest", "dpmpp_2m", "discrete"),
          "euler": ("test_scheduler_euler", "EulerDiscreteSchedulerTest", "euler", "discrete"),
          "heun": ("test_scheduler_heun", "HeunDiscreteSchedulerTest", "heun", "discrete"),
          "ipndm": ("test_scheduler_ipndm", "IPNDMSchedulerTest", "ipndm", "discrete")}

# The noise table of the common suites (SchedulerCommonTest has no config of its own): diffusers'
# usual test table.
COMMON_TABLE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
# ... and of the common-flow suites: a flow-matching model (what from_config makes of a
# FlowMatchEulerDiscreteScheduler config).
FLOW_TABLE = {"num_train_timesteps": 1000, "prediction_type": "flow_prediction"}


def import_diffusers_tests(checkout: Path) -> types.ModuleType:
    """Import `<checkout>/tests` as the package PACKAGE (relative imports inside it keep working)."""
    tests = checkout / "tests"
    if not (tests / "schedulers").is_dir():
        raise SystemExit(f"{checkout} has no tests/schedulers: give --diffusers the root of a diffusers clone")
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, tests / "__init__.py", submodule_search_locations=[str(tests)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return package


def checkout_version(checkout: Path) -> str:
    for path, pattern in ((checkout / "setup.py", r'version="([^"]+)"'),
                          (checkout / "src" / "diffusers" / "__init__.py", r'__version__ = "([^"]+)"')):
        match = re.search(pattern, path.read_text()) if path.is_file() else None
        if match:
            return match.group(1)
    return "unknown (no setup.py)"


def fewstep_config(native: dict, sampler: str, schedule: str) -> dict:
    """FewstepScheduler's keys of a diffusers scheduler's config that differ from FewstepScheduler's
    defaults, plus sampler and schedule (what `FewstepScheduler.from_config(native, sampler=...,
    schedule=...)` would set, without the keys left at their defaults, so that a test may still pass
    e.g. `trained_betas=` next to `**config`)."""
    from fewstep.pipelines import FewstepScheduler

    params = inspect.signature(FewstepScheduler.__init__).parameters
    config = {key: value for key, value in native.items()
              if key in params and key != "self" and value != params[key].default}
    config.update(sampler=sampler, schedule=schedule)
    return config


def suite_class_name(name: str) -> str:
    return "Test_" + re.sub(r"\W", "_", name)


def make_suite(name: str, parent: type, sampler: str, schedule: str) -> type:
    """A subclass of diffusers' test class `parent` that tests FewstepScheduler."""
    from fewstep.pipelines import FewstepScheduler

    common = parent.__name__ == "SchedulerCommonTest"
    native_class = None if common else parent.scheduler_classes[0]

    def get_scheduler_config(self, **kwargs):
        if common:
            native = dict(FLOW_TABLE if name.startswith("common-flow") else COMMON_TABLE)
        else:  # the full config of the diffusers scheduler under test, built from diffusers' test config
            native = dict(native_class(**parent.get_scheduler_config(self)).config)
        config = fewstep_config(native, sampler, schedule)
        config.update(kwargs)
        return config

    class_name = suite_class_name(name)
    attrs = {"scheduler_classes": (FewstepScheduler,), "get_scheduler_config": get_scheduler_config,
             "__module__": BUILDER, "__qualname__": class_name,
             "__doc__": f"diffusers' {parent.__name__} on FewstepScheduler(sampler={sampler!r}, schedule={schedule!r})"}
    return type(class_name, (parent,), attrs)


def build_suites(checkout: Path, names: list[str], schedule: str) -> tuple[dict, dict]:
    """`({class name: suite class}, {suite name: import error})` for the suites `names`."""
    import_diffusers_tests(checkout)
    classes, broken = {}, {}
    for name in names:
        module, class_name, sampler, suite_schedule = SUITES[name]
        try:
            parent = getattr(importlib.import_module(f"{PACKAGE}.schedulers.{module}"), class_name)
        except Exception as error:  # e.g. a checkout newer than the installed diffusers
            broken[name] = f"{type(error).__name__}: {error}"
            continue
        suite = make_suite(name, parent, sampler, suite_schedule or schedule)
        classes[suite.__name__] = suite
    return classes, broken


def collect() -> dict:
    """The suite classes of PLAN, for the generated test module's namespace (called by pytest's
    collection); the suites whose diffusers test module does not import go to BROKEN."""
    classes, broken = build_suites(PLAN["checkout"], PLAN["names"], PLAN["schedule"])
    BROKEN.update(broken)
    return classes


class Collector:
    """pytest plugin: the outcome of every test, per suite class."""

    def __init__(self):
        self.results = defaultdict(dict)  # class name -> {test: (outcome, reason)}

    def pytest_runtest_logreport(self, report):
        parts = report.nodeid.split("::")
        if len(parts) < 3:
            return
        suite, test = parts[-2], parts[-1]
        results = self.results[suite]
        if report.when == "call":
            results[test] = (report.outcome, self.reason(report))
        elif report.failed and results.get(test, ("passed",))[0] in ("passed", "skipped"):  # setup/teardown
            results[test] = ("error", f"in {report.when}: {self.reason(report)}")
        elif report.skipped and test not in results:
            results[test] = ("skipped", self.reason(report))

    def pytest_collectreport(self, report):
        if report.failed:
            self.results["<collection>"][report.nodeid or "module"] = ("error", self.reason(report))

    @staticmethod
    def reason(report) -> str:
        if report.passed:
            return ""
        if report.skipped and isinstance(report.longrepr, tuple):
            return str(report.longrepr[2]).removeprefix("Skipped: ")
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(report.longrepr)
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        line = lines[0] if lines else "?"
        # pytest's "assert 0.089 < 0.001" is more telling with its next line ("+  where 0.089 = abs(...)"),
        # and an "ImportError:" with the message on the next line needs it
        if len(lines) > 1 and (re.match(r"(AssertionError: )?assert ", line) or line.endswith(":")):
            line += " | " + lines[1]
        return line if len(line) <= 300 else line[:297] + "..."


def run(checkout: Path, names: list[str], schedule: str, keyword: str | None, verbose: bool) -> int:
    import diffusers
    import pytest

    print(f"diffusers installed: {diffusers.__version__} ({Path(diffusers.__file__).parent}); "
          f"checkout: {checkout} (version {checkout_version(checkout)})")
    # The suites are built while pytest collects the generated module, so that pytest's assertion
    # rewriting (active for test_*.py files imported during collection) applies to diffusers' test
    # modules too: a failing `assert abs(result - 172.0067) < 1e-2` then shows its numbers.
    PLAN.update(checkout=checkout, names=names, schedule=schedule)
    sys.modules[BUILDER] = sys.modules[__name__]

    collector = Collector()
    with tempfile.TemporaryDirectory(prefix="fewstep_diffusers_suite_") as tmp:
        tmp = Path(tmp)
        (tmp / "pytest.ini").write_text("[pytest]\naddopts =\n")
        test_file = tmp / "test_fewstep_vs_diffusers.py"
        test_file.write_text(f"import {BUILDER} as _builder  # generated by scripts/diffusers_scheduler_suite.py\n"
                             f"globals().update(_builder.collect())\n")
        args = [str(test_file), "-c", str(tmp / "pytest.ini"), "--rootdir", str(tmp), "--confcutdir", str(tmp),
                "-p", "no:cacheprovider", "-o", "console_output_style=classic", "-rN", "--tb=short" if verbose else "--tb=no"]
        args += ["-v"] if verbose else ["-q", "--no-header", "-p", "no:warnings"]
        if keyword:
            args += ["-k", keyword]
        pytest.main(args, plugins=[collector])
    broken = BROKEN

    failed_total = 0
    totals = defaultdict(int)
    print("\n" + "=" * 100)
    for name in names:
        module, class_name, sampler, suite_schedule = SUITES[name]
        header = (f"{name}: diffusers {class_name} on FewstepScheduler(sampler={sampler}, "
                  f"schedule={suite_schedule or schedule})")
        if name in broken:
            print(f"{header}\n    NOT IMPORTABLE: {broken[name]}")
            failed_total += 1
            continue
        results = collector.results.get(suite_class_name(name), {})
        if not results:
            print(f"{header}\n    no test selected")
            continue
        counts = defaultdict(int)
        for outcome, _ in results.values():
            counts[outcome] += 1
            totals[outcome] += 1
        print(f"{header}\n    passed {counts['passed']}  failed {counts['failed']}  errors {counts['error']}  "
              f"skipped {counts['skipped']}")
        for test, (outcome, reason) in sorted(results.items()):
            if outcome in ("failed", "error"):
                print(f"    {outcome.upper():6} {test}: {reason}")
        failed_total += counts["failed"] + counts["error"]
    for test, (outcome, reason) in collector.results.get("<collection>", {}).items():
        print(f"COLLECTION ERROR {test}: {reason}")
        failed_total += 1
    if importlib.util.find_spec("torchsde") is None:
        print("NOTE: torchsde is not installed, so test_compatibles fails in every suite (diffusers' own suites "
              "included): DPMSolverSDEScheduler is among the compatibles and its from_config needs torchsde.")
    print(f"TOTAL: passed {totals['passed']}  failed {totals['failed']}  errors {totals['error']}  "
          f"skipped {totals['skipped']}")
    return 1 if failed_total else 0


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
    return run(args.diffusers.resolve(), names, args.schedule, args.keyword, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
