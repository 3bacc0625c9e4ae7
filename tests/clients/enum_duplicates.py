"""Fails when a generated client holds an enum more than once.

An enum the document inlines in each parameter instead of referencing one
component comes out as one type per place (`ListFeedbackKind`,
`GetFeedbackKind`, ...), and a value of one is not accepted where another is
expected. This counts, by their values, the string-literal unions in the
TypeScript types of openapi-typescript and the Enum classes in the models of
openapi-python-client, and fails on any set of values found twice, or when
the shared enums (Kind, Order, Rating) are missing.

Usage: python3 enum_duplicates.py --ts schema.d.ts --python path/to/models
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import Counter
from pathlib import Path

SHARED = {
    "Kind": frozenset({"completions", "responses"}),
    "Order": frozenset({"asc", "desc"}),
    "Rating": frozenset({"thumbs_up", "thumbs_down"}),
}

UNION = re.compile(r'"[^"\n]*"(?:\s*\|\s*"[^"\n]*")+')


def typescript_enums(path: Path) -> list[tuple[str, frozenset[str]]]:
    """Every union of two or more string literals, outside comments."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        code = line.strip()
        if code.startswith(("*", "/*", "//")):
            continue
        for union in UNION.findall(code):
            values = frozenset(value.strip().strip('"') for value in union.split("|"))
            found.append((f"{path.name}:{number}", values))
    return found


def python_enums(models: Path) -> list[tuple[str, frozenset[str]]]:
    """Every class deriving from an `...Enum` base, with its member values."""
    found = []
    for module in sorted(models.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases]
            if not any(name.endswith("Enum") for name in bases):
                continue
            values = frozenset(
                str(statement.value.value)
                for statement in node.body
                if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
            )
            found.append((f"{module.name}:{node.name}", values))
    return found


def report(language: str, enums: list[tuple[str, frozenset[str]]]) -> bool:
    """Prints the duplicates and missing shared enums; True when there are none."""
    counts = Counter(values for _, values in enums)
    healthy = True
    for values, count in sorted(counts.items(), key=lambda item: sorted(item[0])):
        if count > 1:
            healthy = False
            places = ", ".join(place for place, found in enums if found == values)
            print(f"{language}: enum {sorted(values)} generated {count} times: {places}", file=sys.stderr)
    for name, values in SHARED.items():
        if counts[values] == 0:
            healthy = False
            print(f"{language}: the shared enum {name} {sorted(values)} is missing", file=sys.stderr)
    print(f"{language}: {len(enums)} enums, {len(counts)} distinct, {'no duplicates' if healthy else 'FAILED'}")
    return healthy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ts", type=Path, required=True, help="openapi-typescript output (.d.ts)")
    parser.add_argument("--python", type=Path, required=True, help="openapi-python-client models/ directory")
    args = parser.parse_args()
    healthy = report("typescript", typescript_enums(args.ts))
    healthy = report("python", python_enums(args.python)) and healthy
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
