#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (slow: run by hand, not in CI). See MUTATION.md.
#
#   scripts/mutation.sh                          # every mutant of the six core modules (about 70 min)
#   scripts/mutation.sh samplers/solvers.py ...  # every mutant of these modules (paths or dotted names)
#   scripts/mutation.sh --survivors [MODULE...]  # only the mutants that survived the last run
#   scripts/mutation.sh --summary                # only the table of the last results
#
# The configuration is [tool.mutmut] in pyproject.toml: mutmut copies the packages into mutants/,
# mutates the core modules there and runs, for each mutant, only the tests that call the mutated
# function (which tests call what is recorded afresh at every run, so edited code and tests are
# seen). One worker process, torch on one thread (override: MUTMUT_MAX_CHILDREN, OMP_NUM_THREADS).
# The log is mutants/mutation.log; look at one mutant with `mutmut show NAME`.
#
# Exit status: 0 when every module run kills at least 90% of its mutants and every survivor is
# listed in MUTATION.md; 1 when not (the unlisted survivors are printed); 2 when the run cannot
# happen (no mutmut, failing tests without mutants, tests not importing the mutated code).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

MODULES=(evaluation/frechet.py samplers/schedules.py samplers/schedulers.py samplers/skip_tuning.py
         samplers/solvers.py training/engine.py)
PYTHON=${PYTHON:-python}
MUTMUT=${MUTMUT:-mutmut}
if ! command -v "$MUTMUT" >/dev/null 2>&1 && [ -x .venv/bin/mutmut ]; then
    MUTMUT=.venv/bin/mutmut PYTHON=.venv/bin/python
fi
if ! command -v "$MUTMUT" >/dev/null 2>&1 \
   || ! "$PYTHON" -c 'import sys, mutmut; sys.exit(int(mutmut.__version__.split(".")[0]) < 3)' 2>/dev/null; then
    echo "mutation: cannot run: mutmut 3 is not installed (pip install -e '.[dev]')" >&2
    exit 2
fi

results() {  # MODE MODULE...: MODE "table" prints the results and exits 0/1; "survivors" prints their names
    "$PYTHON" - "$@" <<'EOF'
import json, re, sys
from pathlib import Path
from mutmut.stats import status_by_exit_code

mode, modules = sys.argv[1], sys.argv[2:]
NOT_KILLED = ("survived", "no tests", "suspicious", "segfault")
listed = set(re.findall(r"[\w.]+__mutmut_\d+", Path("MUTATION.md").read_text())) if Path("MUTATION.md").exists() else set()
rows, unlisted, ok = [], [], True
for module in modules:
    meta = Path("mutants") / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    statuses = {name: status_by_exit_code[code] for name, code in codes.items()}
    if mode == "survivors":
        print("\n".join(name for name, status in statuses.items() if status in NOT_KILLED))
        continue
    if all(status == "not checked" for status in statuses.values()):
        rows.append(f"{module:28} not run")
        continue
    count = lambda *wanted: sum(status in wanted for status in statuses.values())
    total = len(statuses) - count("skipped")
    killed, timeout, survived, no_tests = count("killed"), count("timeout"), count("survived"), count("no tests")
    score = (killed + timeout) / total if total else 1.0
    ok &= score >= 0.9
    rows.append(f"{module:28} {total:6} {killed:7} {survived:9} {no_tests:9} {timeout:8} "
                f"{total - killed - timeout - survived - no_tests:6} {score:7.1%}")
    unlisted += [f"{name} ({status})" for name, status in statuses.items() if status in NOT_KILLED and name not in listed]
if mode == "table":
    print(f"{'module':28} {'total':>6} {'killed':>7} {'survived':>9} {'no tests':>9} {'timeout':>8} {'other':>6} {'score':>7}")
    print("\n".join(rows))
    if unlisted:
        print(f"\n{len(unlisted)} survivor(s) neither killed nor listed in MUTATION.md (see `mutmut show NAME`):")
        print("\n".join("  " + u for u in unlisted))
    sys.exit(0 if ok and not unlisted else 1)
EOF
}

mode=modules targets=()
for arg in "$@"; do
    case "$arg" in
        --summary) mode=summary ;;
        --survivors) mode=survivors ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) path=${arg%.py}; path=${path//.//}.py
           [[ " ${MODULES[*]} " == *" $path "* ]] \
               || { echo "mutation: cannot run: $arg is not one of the core modules: ${MODULES[*]}" >&2; exit 2; }
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
    for path in "${targets[@]}"; do module=${path%.py}; names+=("${module//\//.}.*"); done
fi

mkdir -p mutants
rm -f mutants/mutmut-stats.json  # mutmut would keep old test-to-function links for code edited since
log=mutants/mutation.log
start=$(date +%s)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1} \
    "$MUTMUT" run --max-children "${MUTMUT_MAX_CHILDREN:-1}" "${names[@]}" > "$log" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
if [ "$status" -ne 0 ]; then
    if grep -a -q -e "failed to collect stats" -e "Failed to run clean test" "$log"; then
        echo "mutation: cannot run: the selected tests fail without any mutant (baseline); see $log" >&2
    elif grep -a -q "Unable to force test failures" "$log"; then
        echo "mutation: cannot run: the tests do not import the mutated code in mutants/; see $log" >&2
    else
        echo "mutation: cannot run: mutmut exited with status $status; see $log" >&2
    fi
    exit 2
fi
echo "mutation: ${#names[@]} name pattern(s) tested in ${elapsed}s"
results table "${targets[@]}"
