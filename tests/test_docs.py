"""The README's option tables, parsed as tables: each command's section has one table that
lists exactly the options its parser takes (a row stranded outside the table is missing)."""

from __future__ import annotations

import os
import re

import pytest

from litesync.cli import build_parser

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
# Accepted by every command, documented once under "Commands".
GLOBAL_OPTIONS = {"--config", "--verbose", "-v", "--help", "-h"}


def sections(text: str) -> dict[str, str]:
    """Return the body of each "### litesync ..." section, by its heading."""
    parts = re.split(r"^### (litesync .*)$", text, flags=re.M)
    return {heading: re.split(r"^#{1,3} ", body, flags=re.M)[0] for heading, body in zip(parts[1::2], parts[2::2])}


def option_tables(body: str) -> list[list[str]]:
    """Return the tables headed "| option | meaning |" in ``body``: each the list of its first cells."""
    tables, rows = [], None
    for line in body.splitlines():
        if line.startswith("| option | meaning |"):
            rows = []
            tables.append(rows)
        elif rows is not None and line.startswith("|"):
            if not line.startswith("|---"):
                rows.append(line.split("|")[1].strip())
        else:
            rows = None
    return tables


def documented_options(cell: str) -> set[str]:
    """Return the options a first cell names: `-o, --output OUT` gives {-o, --output}."""
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", cell.replace("`", " ")))


def commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices.items())


def test_every_section_has_at_most_one_option_table():
    for heading, body in sections(open(README).read()).items():
        assert len(option_tables(body)) <= 1, f"{heading}: an option table is split (a row stranded after text?)"


@pytest.mark.parametrize("name,parser", commands())
def test_each_command_table_lists_exactly_its_options(name, parser):
    found = [(h, b) for h, b in sections(open(README).read()).items() if re.search(rf"\blitesync {name}\b", h)]
    assert len(found) == 1, f"no section (or several) for litesync {name}"
    heading, body = found[0]
    tables = option_tables(body)
    documented = set().union(*(documented_options(cell) for cell in tables[0])) if tables else set()
    taken = {opt for action in parser._actions for opt in action.option_strings} - GLOBAL_OPTIONS
    assert taken <= documented, f"{heading}: options missing from its table: {sorted(taken - documented)}"
    assert documented <= taken, f"{heading}: table rows for options it does not take: {sorted(documented - taken)}"
