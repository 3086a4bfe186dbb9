"""Fetch the emoji image packages from the npm registry and lay them out as a captioned image folder.

    python -m model.scripts.fetch_emoji --output data/emoji                      (both sets, with npm)
    python -m model.scripts.fetch_emoji --output data/emoji --sets twitter --from twitter=/path/to/package

Writes one sub-folder per emoji category (the `folder` data source's classes), a metadata.jsonl of captions and
LICENSES.md (data/emoji.py). Without npm, download `emoji-datasource-<set>-16.0.0.tgz` from the npm registry, unpack
it and pass the folder with --from.
"""
from __future__ import annotations

from pathlib import Path

from model.errors import ArgParser, UserError, cli_entry


def make_parser() -> ArgParser:
    p = ArgParser(prog="python -m model.scripts.fetch_emoji", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="a new or empty folder for the images")
    p.add_argument("--sets", nargs="+", default=["twitter", "google"], help="emoji sets: twitter, google")
    p.add_argument("--from", dest="given", action="append", default=[], metavar="SET=DIR",
                   help="an unpacked package to use instead of npm pack (repeat per set)")
    return p


def given_folders(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not folder:
            raise UserError(f"--from {item!r} is not SET=DIR, e.g. twitter=/tmp/package")
        out[name] = Path(folder)
    return out


@cli_entry
def main(argv: list[str]) -> int:
    from data.emoji import fetch

    args = make_parser().parse_args(argv)
    written = fetch(args.sets, Path(args.output), given_folders(args.given))
    for name, n in written.items():
        print(f"{name}: {n} images")
    print(f"wrote {sum(written.values())} captioned images to {args.output} (metadata.jsonl, LICENSES.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
