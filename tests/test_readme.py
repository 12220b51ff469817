"""The README a newcomer reads: short, self-contained, every link and file it names is there."""

import re
import shlex

from streamscore.streams.cli import build_parser
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_needs_nothing_outside_the_repository():
    assert len(README.splitlines()) <= 300
    assert "../shared" not in README


def test_every_link_and_named_file_exists():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    named = re.findall(r"`((?:datasets|deploy|docs|schemas)/[\w./-]+)`", README)
    assert links and named
    missing = [p for p in links + named if not (ROOT / p).exists()]
    assert not missing, missing


def test_every_streamscore_command_in_the_readme_parses():
    parser = build_parser()
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].split("| ")[-1].strip().rstrip("&").strip()
            if line.startswith("streamscore "):
                commands.append(shlex.split(line)[1:])
    assert len(commands) >= 7
    for args in commands:
        assert parser.parse_args(args).command == args[0], args
