"""Plugin discovery: built-ins, ``lowprob`` entry points and explicit plugin objects, into a fresh
Registry.

Each :func:`load_registry` call builds its own ``pluggy.PluginManager``, so there is no global
plugin state. Environment switches (read on every call):

* ``LOWPROB_BLOCK_PLUGINS`` — comma-separated plugin names not to load (added to ``block=``).
* ``LOWPROB_DISABLE_ENTRYPOINTS=1`` — load no third-party plugins from entry points.
* ``LOWPROB_TRACE_PLUGINS=1`` — trace every hook call to stderr.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pluggy
from pydantic import BaseModel, ConfigDict

from lowprob.core.errors import LowprobError
from lowprob.plugins import hookspecs
from lowprob.plugins.builtin import BUILTIN_MODULES
from lowprob.plugins.registry import Kind, PluginError, PluginMeta, Registrar, Registry, empty_table

ENTRY_POINT_GROUP = "lowprob"
BLOCK_ENV = "LOWPROB_BLOCK_PLUGINS"
DISABLE_ENTRYPOINTS_ENV = "LOWPROB_DISABLE_ENTRYPOINTS"
TRACE_ENV = "LOWPROB_TRACE_PLUGINS"


@dataclass(frozen=True)
class _Candidate:
    """A plugin that may be loaded: its names (any of which blocks it), version, origin and
    importer."""

    name: str
    aliases: frozenset[str]
    version: str
    source: str
    load: Callable[[], object]


class PluginInfo(BaseModel):
    """What ``lowprob plugins`` shows for one plugin; ``model_dump()`` is JSON-serialisable."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    source: str
    hooks: list[str]
    provides: dict[str, list[str]]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _lowprob_version() -> str:
    try:
        return metadata.version("lowprob")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _import(module: str, what: str) -> Callable[[], object]:
    def load() -> object:
        try:
            return importlib.import_module(module)
        except Exception as exc:
            raise PluginError(f"{what} could not be imported: {type(exc).__name__}: {exc}") from exc

    return load


def _builtin_candidates() -> Iterator[_Candidate]:
    version = _lowprob_version()
    for module in BUILTIN_MODULES:
        short = module.rpartition(".")[2]
        name = f"lowprob.{short}"
        yield _Candidate(
            name,
            frozenset({name, short, module}),
            version,
            "builtin",
            _import(module, f"built-in plugin module {module}"),
        )


def _entry_point_candidates() -> Iterator[_Candidate]:
    points = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.dist.name if ep.dist else "", ep.name),
    )
    per_dist = Counter(ep.dist.name for ep in points if ep.dist)
    for ep in points:
        dist_name = ep.dist.name if ep.dist else ep.name
        name = dist_name if per_dist[dist_name] <= 1 else f"{dist_name}:{ep.name}"

        def load(ep: metadata.EntryPoint = ep, name: str = name) -> object:
            try:
                return ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {name!r} (entry point {ep.name} = {ep.value}) could not be "
                    f"loaded: {type(exc).__name__}: {exc}"
                ) from exc

        yield _Candidate(
            name,
            frozenset({name, dist_name, ep.name}),
            ep.dist.version if ep.dist else "",
            "entry point",
            load,
        )


def _identity(obj: object) -> object:
    return obj


def _extra_candidates(plugins: Sequence[object]) -> Iterator[_Candidate]:
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        yield _Candidate(
            name,
            frozenset({name}),
            str(getattr(plugin, "__version__", "")),
            "extra",
            functools.partial(_identity, plugin),
        )


def _blocked(block: Iterable[str] | None) -> set[str]:
    names = set(block or ())
    names.update(part.strip() for part in os.environ.get(BLOCK_ENV, "").split(","))
    names.discard("")
    return names


def _enable_tracing(pm: pluggy.PluginManager) -> None:
    pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
    pm.enable_tracing()


def _validation_error(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> PluginError:
    name = pm.get_name(exc.plugin) or repr(exc.plugin)
    return PluginError(
        f"plugin {name!r} is invalid: {exc}; lowprob's hooks are {', '.join(hookspecs.HOOK_NAMES)}"
    )


def _register(
    pm: pluggy.PluginManager, candidates: Iterable[_Candidate], blocked: set[str]
) -> list[tuple[_Candidate, object]]:
    loaded = []
    for candidate in candidates:
        if candidate.aliases & blocked:
            continue
        plugin = candidate.load()
        if pm.is_registered(plugin):
            raise PluginError(
                f"plugin {candidate.name!r} is the same object as plugin "
                f"{pm.get_name(plugin)!r}; register it once"
            )
        if pm.has_plugin(candidate.name):
            raise PluginError(f"two plugins are named {candidate.name!r}")
        try:
            pm.register(plugin, name=candidate.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {candidate.name!r} is invalid: {exc}") from None
        loaded.append((candidate, plugin))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise _validation_error(pm, exc) from None
    return loaded


def load_registry(
    *,
    block: Iterable[str] | None = None,
    entry_points: bool = True,
    extra_plugins: Sequence[object] = (),
) -> Registry:
    """Load the built-ins, entry-point plugins (unless disabled) and ``extra_plugins`` into a new
    Registry.

    Plugins named in ``block`` or ``LOWPROB_BLOCK_PLUGINS`` are not even imported. Built-ins are
    named ``lowprob.<module>`` (e.g. ``lowprob.naive``) and may be blocked by the short module name
    too; entry-point plugins are named after their distribution and may be blocked by the
    entry-point name.
    """
    pm = pluggy.PluginManager("lowprob")
    pm.add_hookspecs(hookspecs)
    if _env_flag(TRACE_ENV):
        _enable_tracing(pm)
    candidates: list[Iterable[_Candidate]] = [_builtin_candidates()]
    if entry_points and not _env_flag(DISABLE_ENTRYPOINTS_ENV):
        candidates.append(_entry_point_candidates())
    candidates.append(_extra_candidates(extra_plugins))
    loaded = _register(pm, (c for group in candidates for c in group), _blocked(block))
    table = empty_table()
    metas = []
    for candidate, plugin in loaded:
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        meta = PluginMeta(candidate.name, candidate.version, candidate.source, hooks)
        metas.append(meta)
        registrar = Registrar(meta, table)
        others = [p for p in pm.get_plugins() if p is not plugin]
        for hook in hooks:
            try:
                pm.subset_hook_caller(hook, others)(registrar=registrar)
            except LowprobError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {meta.name!r} failed in {hook}: {type(exc).__name__}: {exc}"
                ) from exc
    return Registry(table, tuple(metas))


def plugin_infos(registry: Registry) -> list[PluginInfo]:
    """One :class:`PluginInfo` per loaded plugin, in load order, listing what each registered."""
    infos = []
    for meta in registry.plugins:
        provides = {
            kind.value: [e.name for e in registry.entries(kind) if e.plugin == meta.name]
            for kind in Kind
        }
        infos.append(
            PluginInfo(
                name=meta.name,
                version=meta.version,
                source=meta.source,
                hooks=list(meta.hooks),
                provides={k: v for k, v in provides.items() if v},
            )
        )
    return infos
