"""diffusers' own scheduler tests run against `FewstepScheduler`: a compatibility report.

The checkout's `tests` folder is imported as the package `_diffusers_tests` (its `conftest.py` is not
loaded: it would put the checkout's `src/` in front of the installed diffusers). For every suite a
subclass of diffusers' test class is made with `scheduler_classes = (FewstepScheduler,)` and a
`get_scheduler_config(**kwargs)` giving FewstepScheduler the config of the diffusers scheduler under
test (`fewstep_config`); pytest collects the subclasses from a generated one-line module in a
temporary directory with its own empty pytest.ini. `scripts/diffusers_scheduler_suite.py` is the
command.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import tempfile
import types
from collections import defaultdict
from pathlib import Path

PACKAGE = "_diffusers_tests"              # the checkout's tests/ folder, imported under this name
PLAN = {}                                 # what the generated test module builds: set by run_tests()
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
        raise ValueError(f"{checkout} has no tests/schedulers: give --diffusers the root of a diffusers clone")
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, tests / "__init__.py", submodule_search_locations=[str(tests)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return package


def checkout_version(checkout: Path) -> str:
    """The diffusers version of a checkout, from its setup.py or its package's __init__.py."""
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
    """The Python class name of the suite `name`."""
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
             "__module__": __name__, "__qualname__": class_name,
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


def versions(checkout: Path) -> str:
    """The installed diffusers' version and folder, and the checkout's version."""
    import diffusers

    return (f"diffusers installed: {diffusers.__version__} ({Path(diffusers.__file__).parent}); "
            f"checkout: {checkout} (version {checkout_version(checkout)})")


def run_tests(checkout: Path, names: list[str], schedule: str, keyword: str | None = None,
              verbose: bool = False) -> tuple[dict, dict]:
    """Run the suites `names` under pytest (`keyword`: its -k; `verbose`: its own output and tracebacks):
    `({class name: {test: (outcome, reason)}}, {suite name: import error})`."""
    import pytest

    import_diffusers_tests(checkout)  # refuses a folder without tests/schedulers
    # The suites are built while pytest collects the generated module, so that pytest's assertion
    # rewriting (active for test_*.py files imported during collection) applies to diffusers' test
    # modules too: a failing `assert abs(result - 172.0067) < 1e-2` then shows its numbers.
    PLAN.update(checkout=checkout, names=names, schedule=schedule)
    BROKEN.clear()
    collector = Collector()
    with tempfile.TemporaryDirectory(prefix="fewstep_diffusers_suite_") as tmp:
        tmp = Path(tmp)
        (tmp / "pytest.ini").write_text("[pytest]\naddopts =\n")
        test_file = tmp / "test_fewstep_vs_diffusers.py"
        test_file.write_text(f"import {__name__} as _builder  # generated by {__name__}\n"
                             f"globals().update(_builder.collect())\n")
        args = [str(test_file), "-c", str(tmp / "pytest.ini"), "--rootdir", str(tmp), "--confcutdir", str(tmp),
                "-p", "no:cacheprovider", "-o", "console_output_style=classic", "-rN", "--tb=short" if verbose else "--tb=no"]
        args += ["-v"] if verbose else ["-q", "--no-header", "-p", "no:warnings"]
        if keyword:
            args += ["-k", keyword]
        pytest.main(args, plugins=[collector])
    return dict(collector.results), dict(BROKEN)


def report(names: list[str], schedule: str, results: dict, broken: dict) -> tuple[str, int]:
    """The printed report of `run_tests`' outcome: per suite the counts and each failure with its reason,
    then the totals; and how many suites did not import, tests failed or errored, and collections failed."""
    failed_total, totals, lines = 0, defaultdict(int), ["", "=" * 100]
    for name in names:
        module, class_name, sampler, suite_schedule = SUITES[name]
        lines.append(f"{name}: diffusers {class_name} on FewstepScheduler(sampler={sampler}, "
                     f"schedule={suite_schedule or schedule})")
        if name in broken:
            lines.append(f"    NOT IMPORTABLE: {broken[name]}")
            failed_total += 1
            continue
        outcomes = results.get(suite_class_name(name), {})
        if not outcomes:
            lines.append("    no test selected")
            continue
        counts = defaultdict(int)
        for outcome, _ in outcomes.values():
            counts[outcome] += 1
            totals[outcome] += 1
        lines.append(f"    passed {counts['passed']}  failed {counts['failed']}  errors {counts['error']}  "
                     f"skipped {counts['skipped']}")
        lines += [f"    {outcome.upper():6} {test}: {reason}" for test, (outcome, reason) in sorted(outcomes.items())
                  if outcome in ("failed", "error")]
        failed_total += counts["failed"] + counts["error"]
    for test, (outcome, reason) in results.get("<collection>", {}).items():
        lines.append(f"COLLECTION ERROR {test}: {reason}")
        failed_total += 1
    if importlib.util.find_spec("torchsde") is None:
        lines.append("NOTE: torchsde is not installed, so test_compatibles fails in every suite (diffusers' own "
                     "suites included): DPMSolverSDEScheduler is among the compatibles and its from_config needs "
                     "torchsde.")
    lines.append(f"TOTAL: passed {totals['passed']}  failed {totals['failed']}  errors {totals['error']}  "
                 f"skipped {totals['skipped']}")
    return "\n".join(lines), failed_total
