#!/usr/bin/env bash
# Mutation testing of the configured modules with mutmut 3 (slow: run by hand, not in CI). See MUTATION.md.
#
#   scripts/mutation.sh                          # every mutant of every configured module (hours)
#   scripts/mutation.sh --core                   # every mutant of the six core modules
#   scripts/mutation.sh samplers/solvers.py ...  # every mutant of these modules (paths or dotted names)
#   scripts/mutation.sh --survivors [MODULE...]  # only the mutants not run yet and the survivors not listed in MUTATION.md
#   scripts/mutation.sh --summary                # only the table of the last results
#
# mutmut runs in .mutation/ (git-ignored), which this script fills with links into the checkout:
# fewstep/<package> for the code packages (mutmut's source, so that mutants are named
# fewstep.samplers.solvers.x_... like the modules the tests import) and the checkout's own layout
# (tests/, conf/, scripts/, assets/, the packages, pyproject.toml) for what the tests read there.
# The configuration is [tool.mutmut] in pyproject.toml (paths relative to .mutation/): mutmut copies
# all this into .mutation/mutants/, mutates the modules there and runs, for each mutant, only
# the tests that call the mutated function (which tests call what is recorded afresh at every run,
# so edited code and tests are seen). One worker process, torch on one thread (override:
# MUTMUT_MAX_CHILDREN, OMP_NUM_THREADS). The log is .mutation/mutants/mutation.log; look at one
# mutant with `(cd .mutation && mutmut show NAME)`.
#
# Exit status: 0 when every module run kills at least 90% of its mutants and every survivor is
# listed in MUTATION.md; 1 when not (the unlisted survivors are printed); 2 when the run cannot
# happen (no mutmut, failing tests without mutants, tests not importing the mutated code).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

CORE=(evaluation/frechet.py samplers/schedules.py pipelines/scheduler.py samplers/skip_tuning.py samplers/solvers.py
      samplers/steps.py training/engine.py)
LATER=(tuning/schedule_search.py tuning/schedule_tables.py samplers/amed.py tuning/amed_predictor.py
       tuning/amed_distill.py flows/rectified_flow.py flows/distill.py flows/straightness.py flows/pairs.py
       gan/losses.py gan/objective.py gan/generators.py)  # searched schedules, AMED, ReFlow, the GAN: as they landed
MODULES=("${CORE[@]}" "${LATER[@]}")  # only_mutate in [tool.mutmut] lists the same files
PACKAGES=(samplers pipelines tuning evaluation training flows gan cli)  # staged as fewstep/<package>: source_paths in [tool.mutmut]
STAGE=.mutation                                   # mutmut's project folder; its working copy is $STAGE/mutants
PYTHON=${PYTHON:-python}
MUTMUT=${MUTMUT:-mutmut}
if ! command -v "$MUTMUT" >/dev/null 2>&1 && [ -x .venv/bin/mutmut ]; then
    MUTMUT=$PWD/.venv/bin/mutmut PYTHON=$PWD/.venv/bin/python  # absolute: mutmut runs in $STAGE
fi
if ! command -v "$MUTMUT" >/dev/null 2>&1 \
   || ! "$PYTHON" -c 'import sys, mutmut; sys.exit(int(mutmut.__version__.split(".")[0]) < 3)' 2>/dev/null; then
    echo "mutation: cannot run: mutmut 3 is not installed (pip install -e '.[dev]')" >&2
    exit 2
fi

results() {  # MODE MODULE...: MODE "table" prints the results and exits 0/1; "survivors" prints their names
    "$PYTHON" - "$STAGE" "$@" <<'EOF'
import json, re, sys
from pathlib import Path
from mutmut.stats import status_by_exit_code

stage, mode, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
NOT_KILLED = ("survived", "no tests", "suspicious", "segfault")
listed = set(re.findall(r"[\w.]+__mutmut_\d+", Path("MUTATION.md").read_text())) if Path("MUTATION.md").exists() else set()
rows, unlisted, ok = [], [], True
for module in modules:
    meta = Path(stage, "mutants", "fewstep") / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    statuses = {name: status_by_exit_code[code] for name, code in codes.items()}
    new = {name for name, status in statuses.items() if status in NOT_KILLED and name not in listed}
    if mode == "survivors" and not meta.exists():  # never run: all of it
        print("fewstep." + module.removesuffix(".py").replace("/", ".") + ".*")
        continue
    if mode == "survivors":  # unlisted survivors, and mutants not run (a stopped run, or functions edited since)
        print("\n".join(name for name, status in statuses.items() if status == "not checked" or name in new))
        continue
    if all(status == "not checked" for status in statuses.values()):
        rows.append(f"{module:28} not run")
        continue
    count = lambda *wanted: sum(status in wanted for status in statuses.values())
    total = len(statuses) - count("skipped")
    killed, timeout, survived, no_tests = count("killed"), count("timeout"), count("survived"), count("no tests")
    unrun = count("not checked")  # a run stopped early, or functions edited since
    score = (killed + timeout) / (total - unrun) if total > unrun else 1.0  # of the mutants tested
    ok &= score >= 0.9 and not unrun
    rows.append(f"{module:28} {total:6} {killed:7} {survived:9} {no_tests:9} {timeout:8} {unrun:8} "
                f"{total - killed - timeout - survived - no_tests - unrun:6} {score:7.1%}")
    unlisted += [f"{name} ({status})" for name, status in statuses.items() if name in new]
if mode == "table":
    print(f"{'module':28} {'total':>6} {'killed':>7} {'survived':>9} {'no tests':>9} {'timeout':>8} {'not run':>8} "
          f"{'other':>6} {'score':>7}")
    print("\n".join(rows))
    if unlisted:
        print(f"\n{len(unlisted)} survivor(s) neither killed nor listed in MUTATION.md (see `mutmut show NAME` in {stage}/):")
        print("\n".join("  " + u for u in unlisted))
    sys.exit(0 if ok and not unlisted else 1)
EOF
}

mode=modules targets=()
for arg in "$@"; do
    case "$arg" in
        --summary) mode=summary ;;
        --survivors) mode=survivors ;;
        --core) targets+=("${CORE[@]}") ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) path=${arg#./}; path=${path%.py}; path=${path//.//}.py; path=${path#fewstep/}
           [[ " ${MODULES[*]} " == *" $path "* ]] \
               || { echo "mutation: cannot run: $arg is not one of the configured modules: ${MODULES[*]}" >&2; exit 2; }
           targets+=("$path") ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${MODULES[@]}")
[ "$mode" = summary ] && { results table "${targets[@]}"; exit $?; }

names=()
if [ "$mode" = survivors ]; then
    mapfile -t names < <(results survivors "${targets[@]}" | sed '/^$/d')
    [ ${#names[@]} -gt 0 ] || { echo "mutation: no survivors to re-test in ${targets[*]}"; results table "${targets[@]}"; exit $?; }
else
    for path in "${targets[@]}"; do module=${path%.py}; names+=("fewstep.${module//\//.}.*"); done
fi

# Stage: links only (mutmut copies through them), and a fewstep/__init__.py that makes the staged
# fewstep a regular package, found on sys.path before the editable install's finder.
mkdir -p "$STAGE/fewstep" "$STAGE/mutants" || exit 2
ln -sfn ../pyproject.toml "$STAGE/pyproject.toml" || exit 2
for dir in tests scripts suites conf assets "${PACKAGES[@]}"; do ln -sfn "../$dir" "$STAGE/$dir" || exit 2; done
for dir in "${PACKAGES[@]}"; do ln -sfn "../../$dir" "$STAGE/fewstep/$dir" || exit 2; done
cat > "$STAGE/fewstep/__init__.py" <<'EOF'
# Written by scripts/mutation.sh, for mutmut only. The code packages are here (in mutants/, mutmut's
# mutated copies); fewstep.conf, fewstep.assets, fewstep.suites and fewstep.scripts come from the folder above, the
# checkout's layout, where the tests look for them too (ROOT / "conf" in tests/conftest.py).
import os

__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EOF
rm -f "$STAGE/mutants/mutmut-stats.json"  # mutmut would keep old test-to-function links for code edited since
for path in "${MODULES[@]}"; do  # a copy made before its module was configured: mutmut would take it as mutated
    [ -e "$STAGE/mutants/fewstep/$path.meta" ] || rm -f "$STAGE/mutants/fewstep/$path"
done
log=$STAGE/mutants/mutation.log
start=$(date +%s)
(cd "$STAGE" && OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1} \
    "$MUTMUT" run --max-children "${MUTMUT_MAX_CHILDREN:-1}" "${names[@]}" > mutants/mutation.log 2>&1)
status=$?
elapsed=$(( $(date +%s) - start ))
if [ "$status" -ne 0 ]; then
    if grep -a -q -e "failed to collect stats" -e "Failed to run clean test" "$log"; then
        echo "mutation: cannot run: the selected tests fail without any mutant (baseline); see $log" >&2
    elif grep -a -q -e "Unable to force test failures" -e "none match any mutant key" \
                   -e "could not find any test case for any mutant" "$log"; then
        echo "mutation: cannot run: the tests do not import the mutated code in $STAGE/mutants/; see $log" >&2
    else
        echo "mutation: cannot run: mutmut exited with status $status; see $log" >&2
    fi
    exit 2
fi
echo "mutation: ${#names[@]} name pattern(s) tested in ${elapsed}s"
results table "${targets[@]}"
