"""The benchmark suites as library functions: each takes the folder to write into and plain keyword
arguments, writes its `<suite>.md` section, `<suite>.json` results and pictures there, and returns
their paths. `scripts/benchmark.py` runs them by name and assembles BENCHMARKS.md."""
from fewstep.suites import amed, digits, fd_speed, flow_accuracy, frontier, gan, gmm, reflow, schedules

SUITES = {"gmm": gmm.gmm, "digits": digits.digits, "reflow": reflow.reflow, "reflow-2d": reflow.reflow_2d,
          "gan-2d": gan.gan_2d, "gan-digits": gan.gan_digits, "fd-speed": fd_speed.fd_speed,
          "schedules": schedules.schedules, "amed": amed.amed, "flow-accuracy": flow_accuracy.flow_accuracy,
          "frontier": frontier.frontier}
