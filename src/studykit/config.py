"""OmegaConf resolvers used by the config tree; imported by every entry point and the tests."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: os.path.abspath(os.path.expanduser(str(p))))


register_resolvers()
