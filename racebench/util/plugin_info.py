"""What a store or lock-service plug-in declares about itself, read without connecting.

Everything other modules need to know about a plug-in lives on its class, so that adding a
store or a lock service is its own module plus one entry-point line in its package's
pyproject.toml (see docs/plugins.md). Reading these attributes imports the plug-in's module,
never its driver: drivers are imported inside the methods that connect.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar


class PluginInfo:
    """The declarations shared by `Store` and `LockService`.

    `default_url` is where the plug-in connects when the scenario names no URL, unless the
    environment variable `url_env` is set (one rule for every plug-in: the variable wins).
    `extra` is the pip extra that installs its `drivers` (distribution names, whose versions
    go into each result file). `ports` maps a URL scheme to the port a URL without one
    means, so that a fault proxy can sit in front of the server. `test_server` names the
    pytest fixture of racebench's suite that starts (or finds) a server for it; a networked
    plug-in without one fails the contract suites under CI=true.
    """

    description: ClassVar[str]
    default_url: ClassVar[str | None] = None
    url_env: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None
    drivers: ClassVar[tuple[str, ...]] = ()
    ports: ClassVar[Mapping[str, int]] = {}
    test_server: ClassVar[str | None] = None
    networked: ClassVar[bool] = True  # reached over TCP (a proxy fault can sit in between)

    @classmethod
    def configured_url(cls) -> str | None:
        """The URL to use when the scenario gives none: $url_env if set, else default_url."""
        if cls.url_env and (value := os.environ.get(cls.url_env)):
            return value
        return cls.default_url
