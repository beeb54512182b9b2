"""``hepray`` command line: a thin layer over :mod:`hepray.api`.

Exit codes: 0 done, 1 the job ran and failed (data, model, shards), 2 the job file is invalid or
its data cannot be used as it asks (found before anything runs).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from .errors import ConfigError, HeprayError, InputError
from .extras import LEAN_XGBOOST


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep:
            raise ConfigError("--set", p, "expected key=value, e.g. --set engine.workers=2")
        out[key] = yaml.safe_load(value)  # numbers/bools/lists as YAML: never eval
    return out


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def cmd_plan(args) -> int:
    from .api import plan

    p = plan(args.job)
    print(f"files {p['files']}  shards {len(p['shards'])}  events {p['events']}  bytes {_fmt_bytes(p['bytes'])} (compressed, selected branches)")
    if args.verbose:
        for s in p["shards"]:
            print(f"  {s.shard_id}  {s.describe()}  {s.num_entries} events  {_fmt_bytes(s.nbytes)}")
    for s in p["skipped"]:
        print(f"  unreadable: {s['skipped']}: {s['error']}")
    return 0


def cmd_run(args) -> int:
    from .api import run

    if args.strict and not args.resume:
        raise ConfigError("--strict", "", "goes with --resume")
    summary = run(args.job, resume="strict" if args.strict else args.resume, overwrite=args.overwrite, workers=args.workers,
                  address=args.address, overrides=_overrides(args.set))
    failed = summary.get("shards_failed", 0)
    return 1 if failed and summary.get("on_error") == "fail" else 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(workers=args.workers, steps=args.steps)
    return 0


def cmd_verify(args) -> int:
    from .io.verify import verify_run

    n, problems = verify_run(args.run_dir)
    for line in problems:
        print(line)
    if problems:
        print(f"hepray: {len(problems)} problems among {n} parts in {args.run_dir}", file=sys.stderr)
        return 1
    print(f"{n} parts good in {args.run_dir}")
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_kinds(args) -> int:
    from .workloads import REGISTRY

    for k in REGISTRY.kinds():
        doc = (REGISTRY.get(k).__doc__ or "").strip().splitlines()
        print(f"{k:18s} {doc[0] if doc else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hepray", description="ML workloads on Ray over ROOT datasets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run a job file")
    p.add_argument("job")
    p.add_argument("--resume", action="store_true", help="skip shards whose parts are committed")
    p.add_argument("--strict", action="store_true",
                   help="with --resume: refuse if any committed part was made by a different job (else redone)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete this job's previous outputs first (only a run folder hepray made)")
    p.add_argument("--workers", type=int, help="number of Ray actors (default: cluster CPUs)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a job field, e.g. engine.workers=2")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("plan", help="print the shard plan of a job's dataset")
    p.add_argument("job")
    p.add_argument("-v", "--verbose", action="store_true", help="list every shard")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("demo", help="generate samples and run every workload, small and fast")
    p.add_argument("--workers", type=int)
    p.add_argument("--steps", nargs="*", help="only these steps")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("verify", help="check every part of a run against its commit marker and the manifest")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("report", help="write RUN_DIR/report.html: the job, summary, metrics and every plot")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("kinds", help="list the workload kinds")
    p.set_defaults(fn=cmd_kinds)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # this process (and a local Ray instance it starts) is hepray's own: import xgboost without
    # its scikit-learn wrappers (extras.import_xgboost, ~1.5 s per process)
    os.environ.setdefault(LEAN_XGBOOST, "1")
    try:
        return args.fn(args)
    except (ConfigError, InputError) as exc:
        print(f"hepray: error: {exc.message}", file=sys.stderr)
        return 2
    except HeprayError as exc:
        print(f"hepray: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hepray: interrupted; committed parts are kept: rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
