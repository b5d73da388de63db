"""lowprob.plugins: the plugin layer — hooks, discovery and the registry of estimators, models and
more.

A plugin implements hooks from :mod:`lowprob.plugins.hookspecs` with ``@hookimpl`` and is found
through the ``lowprob`` entry-point group; :func:`load_registry` gathers everything into a
:class:`Registry`.
"""

from lowprob.plugins.bracketing import LogZBracketing
from lowprob.plugins.fits import ExtrapolationFit, FitResult
from lowprob.plugins.hookspecs import hookimpl, hookspec
from lowprob.plugins.manager import PluginInfo, load_registry, plugin_infos
from lowprob.plugins.registry import Entry, Kind, PluginError, Registrar, Registry

__all__ = [
    "Entry",
    "ExtrapolationFit",
    "FitResult",
    "Kind",
    "LogZBracketing",
    "PluginError",
    "PluginInfo",
    "Registrar",
    "Registry",
    "hookimpl",
    "hookspec",
    "load_registry",
    "plugin_infos",
]
