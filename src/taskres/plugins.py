"""Methods from other packages: entry points of the group ``taskres.methods`` (name -> a ``Method`` class).

A package declares, in its ``pyproject.toml``::

    [project.entry-points."taskres.methods"]
    my_method = "my_package.module:MyMethod"

and ``--method my_method`` then works wherever a built-in method does (fit, bench, report, eval, predict,
export). Plugins are found with ``importlib.metadata`` the first time the method table is looked at, not
when ``taskres`` is imported, so a plugin may import ``taskres`` freely. A plugin that fails to import, is
not a ``Method`` class, takes a built-in's name, or shares its name with another package's is named in one
warning and left out; the built-in methods never depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from importlib import metadata

log = logging.getLogger("taskres")
GROUP = "taskres.methods"


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin method comes from: recorded in config.json, metrics.json and the classifier file."""

    package: str
    version: str
    entry_point: str  # "module:Class"

    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def to_dict(self) -> dict:
        return asdict(self)


def _source(ep: metadata.EntryPoint) -> PluginSource:
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else "an unknown package"
    return PluginSource(name, dist.version if dist is not None else "?", ep.value)


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=GROUP))


class MethodTable(MutableMapping):
    """``--method`` name -> Method class: the built-ins (an explicit dict), then the installed plugins.

    Plugins are loaded on the first lookup; ``problems`` keeps, per name, the one line said about a plugin
    that was left out (so that ``--method NAME`` can say why NAME is missing). Setting or deleting a name
    changes the explicit table (a method registered in code, e.g. by a test).
    """

    def __init__(self, builtin: dict[str, type]):
        self.builtin = builtin
        self._plugins: dict[str, type] | None = None
        self.sources: dict[str, PluginSource] = {}
        self.problems: dict[str, str] = {}

    def _all(self) -> dict[str, type]:
        if self._plugins is None:
            self._plugins = {}  # set first: a plugin that looks at the table while it loads sees the built-ins
            self._plugins = self._discover()
        return {**self.builtin, **self._plugins}

    def _discover(self) -> dict[str, type]:
        from .methods.base import Method

        found: dict[str, list[metadata.EntryPoint]] = {}
        for ep in _entry_points():
            found.setdefault(ep.name, []).append(ep)
        plugins: dict[str, type] = {}
        for name, eps in sorted(found.items()):
            sources = [_source(ep) for ep in eps]
            if name in self.builtin:
                self._left_out(name, f"plugin method {name!r} of {_packages(sources)} has the name of a built-in "
                                     "method and is ignored (rename its entry point)")
                continue
            if len(eps) > 1:
                self._left_out(name, f"plugin method {name!r} is declared by {_packages(sources)}; neither is used "
                                     "(uninstall one)")
                continue
            try:
                cls = eps[0].load()
            except Exception as exc:  # noqa: BLE001 - any failure of third-party code: said, never fatal
                first = str(exc).splitlines()[0] if str(exc) else ""
                self._left_out(name, f"plugin method {name!r} of {_packages(sources)} failed to load "
                                     f"({type(exc).__name__}{': ' + first if first else ''}); it is left out")
                continue
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                self._left_out(name, f"plugin method {name!r} of {_packages(sources)}: {sources[0].entry_point} is "
                                     "not a taskres.methods.Method class; it is left out")
                continue
            plugins[name] = cls
            self.sources[name] = sources[0]
        return plugins

    def _left_out(self, name: str, message: str) -> None:
        self.problems[name] = message
        log.warning(message)

    def source(self, name: str) -> PluginSource | None:
        """The package a method comes from; None for a built-in."""
        self._all()
        return self.sources.get(name)

    def __getitem__(self, name: str) -> type:
        return self._all()[name]

    def __setitem__(self, name: str, cls: type) -> None:
        self.builtin[name] = cls

    def __delitem__(self, name: str) -> None:
        del self.builtin[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, name) -> bool:
        return name in self._all()


def _packages(sources: list[PluginSource]) -> str:
    return " and ".join(f"package {s.requirement()} ({s.entry_point})" for s in sources)


def missing_plugin_hint(source: dict | None) -> str:
    """What to install for a run made with a plugin that this environment lacks ('' when nothing is known)."""
    if not source or not source.get("package"):
        return ""
    return (f"; it was made with a method from package {source['package']} {source.get('version', '')}, which is "
            f"not installed here: pip install '{source['package']}=={source.get('version', '')}'")
