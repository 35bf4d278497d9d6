"""``python -m medsegdiff.sample_data build ROOT [--force]`` and ``... list``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .datastore import REFERENCE_DIRNAME, build_sample_datastore
from .registry import LOADERS, available_scans

def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m medsegdiff.sample_data``.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m medsegdiff.sample_data", description="Real scans and the sample datastore."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the sample datastore into ROOT")
    build.add_argument("root", type=Path, help="datastore folder (created when missing)")
    build.add_argument("--force", action="store_true", help="rewrite the sample files")
    sub.add_parser("list", help="print the loaders whose files are installed")
    args = parser.parse_args(argv)

    if args.command == "list":
        installed = available_scans()
        for name in LOADERS:
            print(f"{name:28s} {'installed' if name in installed else 'missing'}")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = build_sample_datastore(args.root, force=args.force)
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 1
    root = Path(args.root).resolve()
    for item_id in result["ids"]:
        entry = result["items"][item_id]
        label = entry["label"] or "unlabelled"
        print(f"{item_id:20s} {'x'.join(map(str, entry['shape'])):12s} "
              f"{'x'.join(f'{v:g}' for v in entry['spacing_mm'])} mm  {entry['source']:13s} {label}")
    if result["written"]:
        print(f"wrote {len(result['written'])} files under {root} and {root.parent / REFERENCE_DIRNAME}:")
        for path in result["written"]:
            print(f"  {path}")
    else:
        print(f"{root}: up to date, nothing written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
