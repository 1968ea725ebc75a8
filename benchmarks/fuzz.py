"""Fuzz archlint with random valid model files; count failures per property, save reproducers.

    python benchmarks/fuzz.py --examples 500                # random models (tests/fuzz)
    python benchmarks/fuzz.py                               # 200 models (what ./dev bench runs)
    python benchmarks/fuzz.py --examples 200 --chains 100   # plus metamorphic AL101 chains
    python benchmarks/fuzz.py --exclude jit_function,jit_module   # leave feature families out
    python benchmarks/fuzz.py --shrink no_internal_error    # find one failure and shrink it
    python benchmarks/fuzz.py --subprocess                  # python -m archlint per run (slow)

Each generated file is first run with plain torch (forward + backward; a file that does not run
is a generator bug, counted apart). archlint then runs on it in-process through the CLI
(``--format json``; again for byte-identical output; text and SARIF for agreement) and every
property of tests/fuzz/harness.py is checked. Failures are grouped by a signature (property and
the first line of the detail, numbers blanked); the first example of each group is written to
``--out/<property>/<n>/`` (model.py, archlint.yaml when used, command.txt, failure.txt).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(1, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hseed  # noqa: E402

from fuzz.harness import (PROPERTIES, GeneratorBug, full_check, write_case)  # noqa: E402
from fuzz.model_writer import (CHAIN_VARIANTS, FEATURES, model_files,  # noqa: E402
                               saturating_chains)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang("example took longer than the per-example limit")


def signature(prop: str, detail: str) -> str:
    first = detail.strip().splitlines()[0] if detail.strip() else ""
    first = re.sub(r"/tmp/\S+", "<tmp>", first)
    first = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", first)
    first = re.sub(r"'[^']*'", "'…'", first) if prop != "estimate_covers_trained_layers" else first
    return f"{prop}: {first[:160]}"


class Collector:
    def __init__(self, out: Path, args) -> None:
        self.out = out
        self.args = args
        self.tried = 0
        self.chains = 0
        self.generator_bugs: list[str] = []
        self.hangs = 0
        self.failed_examples = 0
        self.per_prop: Counter = Counter()
        self.signatures: dict[str, int] = {}
        self.sig_count: Counter = Counter()
        self.sig_prop: dict[str, str] = {}
        self.by_feature: dict[str, Counter] = defaultdict(Counter)
        self.seconds: list[float] = []

    def record(self, case, fails, seconds: float) -> None:
        self.seconds.append(seconds)
        if fails:
            self.failed_examples += 1
        for prop in {f.prop for f in fails}:
            self.per_prop[prop] += 1
            for feat in case.features:
                self.by_feature[prop][feat] += 1
        for f in fails:
            sig = signature(f.prop, f.detail)
            self.sig_count[sig] += 1
            if sig not in self.signatures:
                n = sum(1 for s in self.signatures if self.sig_prop[s] == f.prop) + 1
                self.signatures[sig] = n
                self.sig_prop[sig] = f.prop
                folder = self.out / f.prop / str(n)
                if folder.exists():
                    shutil.rmtree(folder)
                written = write_case(case, folder)
                rel_args = [a.replace(str(folder), ".") for a in written.args(case)]
                (folder / "command.txt").write_text(
                    f"cd {folder} && python -m archlint {' '.join(rel_args)} --format json\n")
                (folder / "failure.txt").write_text(
                    f"property: {f.prop}\nsignature: {sig}\nfeatures: "
                    f"{', '.join(sorted(case.features))}\ninput: {list(case.input_shape)} "
                    f"({case.input_mode})\n\n{f.detail}\n")


def run_case(case, col: Collector, tmp: Path, args) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    signal.alarm(args.per_example_limit)
    try:
        fails = full_check(case, folder, determinism=not args.no_determinism,
                           formats=not args.no_formats, subprocess_mode=args.subprocess)
    except GeneratorBug as exc:
        col.generator_bugs.append(str(exc)[:2000])
        return
    except Hang as exc:
        from fuzz.harness import Failure

        col.hangs += 1
        fails = [Failure("no_internal_error", f"hang: {exc}")]
    finally:
        signal.alarm(0)
    col.record(case, fails, time.perf_counter() - t0)
    shutil.rmtree(folder, ignore_errors=True)


def collect(args) -> Collector:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    col = Collector(out, args)
    tmp = Path(tempfile.mkdtemp(prefix="archlint-fuzz-"))
    exclude = frozenset(x for x in args.exclude.split(",") if x)
    unknown = exclude - FEATURES
    if unknown:
        sys.exit(f"unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
    signal.signal(signal.SIGALRM, _alarm)
    common = dict(deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))

    if args.examples:
        @hseed(args.seed)
        @settings(max_examples=args.examples, **common)
        @given(model_files(exclude=exclude))
        def models(case):
            col.tried += 1
            run_case(case, col, tmp, args)
            if col.tried % 25 == 0:
                print(f"  {col.tried} models, {col.failed_examples} failing", flush=True)

        models()
    if args.chains:
        @hseed(args.seed + 1)
        @settings(max_examples=args.chains, **common)
        @given(saturating_chains(jit_tail=args.chain_jit_tail))
        def chains(cases):
            col.chains += 1
            for case in cases:
                col.tried += 1
                run_case(case, col, tmp, args)

        chains()
    shutil.rmtree(tmp, ignore_errors=True)
    return col


def report(col: Collector, elapsed: float) -> None:
    import statistics

    print(f"\narchitectures tried: {col.tried} ({col.chains} metamorphic chain draws x "
          f"{len(CHAIN_VARIANTS)} variants among them); generator bugs: "
          f"{len(col.generator_bugs)}; hangs: {col.hangs}")
    if col.seconds:
        print(f"time: {elapsed:.0f} s; per example median {statistics.median(col.seconds):.2f} s,"
              f" max {max(col.seconds):.1f} s")
    print(f"examples failing any property: {col.failed_examples}")
    print("\nfailures per property (examples):")
    for prop in PROPERTIES:
        print(f"  {prop:32s} {col.per_prop.get(prop, 0)}")
    print("\ndistinct failure signatures (count, reproducer folder):")
    for sig, n in col.sig_count.most_common():
        prop = col.sig_prop[sig]
        print(f"  {n:4d}  {col.out / prop / str(col.signatures[sig])}\n        {sig}")
    if col.per_prop:
        print("\nfeatures present in failing examples, per property:")
        for prop, counter in col.by_feature.items():
            print(f"  {prop}: " + ", ".join(f"{f} {n}" for f, n in counter.most_common(8)))
    for bug in col.generator_bugs[:3]:
        print("\nGENERATOR BUG:\n" + bug)


def shrink(args) -> None:
    """Let hypothesis find one example failing ``args.shrink`` and shrink it."""
    from hypothesis import find

    exclude = frozenset(x for x in args.exclude.split(",") if x)
    tmp = Path(tempfile.mkdtemp(prefix="archlint-shrink-"))
    last: dict = {}

    def fails(case) -> bool:
        folder = Path(tempfile.mkdtemp(dir=tmp))
        try:
            found = [f for f in full_check(case, folder, determinism=args.shrink ==
                                           "deterministic", formats=args.shrink in (
                                               "formats_agree", "quiet_default_text"))
                     if f.prop == args.shrink]
        except GeneratorBug:
            return False
        if found:
            last["case"], last["detail"] = case, found[0].detail
        shutil.rmtree(folder, ignore_errors=True)
        return bool(found)

    strategy = (saturating_chains().map(lambda cs: cs[0]) if args.shrink == "al101_metamorphic"
                else model_files(exclude=exclude))
    case = find(strategy, fails, settings=settings(max_examples=args.examples or 300,
                                                   database=None, deadline=None,
                                                   suppress_health_check=list(HealthCheck)))
    fails(case)
    folder = Path(args.out) / f"shrunk-{args.shrink}"
    if folder.exists():
        shutil.rmtree(folder)
    write_case(case, folder)
    (folder / "failure.txt").write_text(last.get("detail", ""))
    print(case.source)
    print("input:", case.input_shape, case.input_mode)
    print("\n" + last.get("detail", ""))
    print(f"\nwritten to {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200,
                    help="random models to try (default 200, about 2-3 min; 500 for a real run)")
    ap.add_argument("--chains", type=int, default=0,
                    help="metamorphic AL101 chain draws (each gives one model per variant)")
    ap.add_argument("--chain-jit-tail", action="store_true",
                    help="end every chain model with a @torch.jit.script x * 2.0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude", default="", help="feature families to leave out (comma list)")
    ap.add_argument("--out", default="fuzz-failures", help="folder for reproducers")
    ap.add_argument("--subprocess", action="store_true", help="python -m archlint per run")
    ap.add_argument("--no-determinism", action="store_true")
    ap.add_argument("--no-formats", action="store_true")
    ap.add_argument("--per-example-limit", type=int, default=60, help="seconds")
    ap.add_argument("--shrink", choices=PROPERTIES,
                    help="find one example failing this property and shrink it")
    args = ap.parse_args()
    if args.shrink:
        shrink(args)
        return
    t0 = time.perf_counter()
    col = collect(args)
    report(col, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
