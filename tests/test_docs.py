"""README.md's links lead somewhere: the site (docs/) is checked by `mkdocs build --strict`,
README is outside it."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_every_relative_link_in_the_readme_resolves() -> None:
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [t for t in targets if not t.startswith(("http://", "https://", "mailto:"))]
    assert relative, "README has no relative links at all: the reference moved?"
    missing = [t for t in relative if not (REPO / t).exists()]
    assert missing == []
    assert not re.search(r"\]\(#", text), "README links to an anchor of its own that moved"
