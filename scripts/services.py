"""Facts derived from the services' declarations (`mc.services` entry points).

    uv run python scripts/services.py src-dirs      # source dirs to type-check (scripts/check.sh)
    uv run python scripts/services.py table         # the README's services table
    uv run python scripts/services.py table --write # rewrite that table in README.md

See docs/adding-a-service.md; tests/repo/test_service_declarations.py fails on disagreement.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mc_common.manifest import load_services, services_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLE = re.compile(r"(<!-- services:begin.*?-->\n)(.*?)(<!-- services:end -->)", re.DOTALL)


def readme_with_table(text: str, table: str) -> str:
    """`text` with the block between the services markers replaced by `table`."""
    if not TABLE.search(text):
        raise SystemExit("README.md has no <!-- services:begin --> ... <!-- services:end -->")
    return TABLE.sub(lambda m: f"{m.group(1)}{table}\n{m.group(3)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("src-dirs", help="print the source directory of every service, one a line")
    table = sub.add_parser("table", help="print the README services table")
    table.add_argument("--write", action="store_true", help="rewrite it in README.md")
    args = parser.parse_args(argv)
    services = load_services()
    if args.what == "src-dirs":
        for manifest in services:
            print(manifest.source_dir().relative_to(ROOT))
    elif args.write:
        README.write_text(readme_with_table(README.read_text(), services_table(services)))
    else:
        print(services_table(services))
    return 0


if __name__ == "__main__":
    sys.exit(main())
