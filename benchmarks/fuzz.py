"""Fuzz every decoder of repository bytes for a fixed number of cases and count outcomes.

The targets (benchmarks/fuzz_targets.py, also run by tests/test_fuzz.py) feed each
decoder mutated bytes: bit flips, truncations, splices, random bytes, and edited
values and types in valid JSON documents. A decoder may only refuse with
ModelHubError or accept and give back exactly what was committed; any other exception
(or a case past --timeout, a hang) is counted as such and printed with the seed that
replays it (``--replay DECODER:SEED``).

    python benchmarks/fuzz.py                      # 100,000 cases over all decoders
    python benchmarks/fuzz.py --cases 2000 --seed 7
    python benchmarks/fuzz.py --replay manifest:123
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_targets as ft
from storage import table


class CaseTimeout(Exception):
    """A case ran past --timeout (a hang, unless the machine is overloaded)."""


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def run_case(corpus: ft.Corpus, name: str, seed: int, timeout: int) -> str:
    """One case: "rejected", "exact", or the name of whatever else came out."""
    target, _ = ft.TARGETS[name]
    signal.alarm(timeout)
    try:
        return target(corpus, ft.RandomSource(seed))
    except CaseTimeout:
        return "timeout"
    except Exception as exc:  # counted and reported: the contract is broken
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.alarm(0)


def plan(cases: int, only: list[str] | None) -> dict[str, int]:
    """Cases per decoder, by the targets' shares (cheap decoders get more)."""
    names = only or list(ft.TARGETS)
    total = sum(ft.TARGETS[n][1] for n in names)
    return {n: max(1, round(cases * ft.TARGETS[n][1] / total)) for n in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000, help="cases in total, over all decoders")
    ap.add_argument("--seed", type=int, default=0, help="first seed (case k of a decoder uses seed + k)")
    ap.add_argument("--only", default="", help="comma-separated decoders, e.g. manifest,skeleton")
    ap.add_argument("--timeout", type=int, default=30, help="seconds a case may take before it counts as a hang")
    ap.add_argument("--replay", default="", help="DECODER:SEED: run one case and show its traceback")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # damaged versions left out of listings warn; counted as accepted
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        corpus = ft.build_corpus(Path(work))
        print(f"corpus built in {time.perf_counter() - t0:.1f} s: {len(corpus.committed)} versions, "
              f"frame cases {', '.join(f'{k}: {len(v)}' for k, v in sorted(corpus.frames.items()))}")
        if args.replay:
            name, _, seed = args.replay.rpartition(":")
            target, _ = ft.TARGETS[name]
            print(target(corpus, ft.RandomSource(int(seed))))
            return 0
        return report(corpus, plan(args.cases, [n for n in args.only.split(",") if n] or None), args)


def report(corpus: ft.Corpus, counts: dict[str, int], args: argparse.Namespace) -> int:
    rows, bad, totals = [], [], [0, 0, 0, 0, 0.0]
    for name, n in counts.items():
        outcomes = {ft.REJECTED: 0, ft.EXACT: 0}
        t0 = time.perf_counter()
        for k in range(n):
            out = run_case(corpus, name, args.seed + k, args.timeout)
            if out in outcomes:
                outcomes[out] += 1
            else:
                bad.append(f"{name}:{args.seed + k}  {out}")
        secs = time.perf_counter() - t0
        other = n - outcomes[ft.REJECTED] - outcomes[ft.EXACT]
        rows.append([name, f"{n:,}", f"{outcomes[ft.REJECTED]:,}", f"{outcomes[ft.EXACT]:,}", f"{other:,}", f"{secs:.1f}"])
        for i, v in enumerate((n, outcomes[ft.REJECTED], outcomes[ft.EXACT], other, secs)):
            totals[i] += v
        print(f"  {name}: {n:,} cases in {secs:.1f} s", file=sys.stderr, flush=True)
    rows.append(["total", *(f"{int(v):,}" for v in totals[:4]), f"{totals[4]:.1f}"])
    print(table(rows, ["decoder", "cases", "ModelHubError", "accepted, bit-exact", "other exceptions", "seconds"]))
    for line in bad[:50]:
        print("FAILED", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
