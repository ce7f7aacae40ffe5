"""Jinja2 environments for the package's HTML pages: one per package that holds a templates/ folder."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup


@cache
def environment(package: str) -> Environment:
    """The autoescaping environment over `package`/templates (user text escaped; built HTML passed as Markup)."""
    return Environment(
        loader=PackageLoader(package, "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def asset(package: str, name: str) -> Markup:
    """A page's own stylesheet or script from `package`/templates, inserted unescaped."""
    env = environment(package)
    return Markup(env.loader.get_source(env, name)[0])
