"""Example lowprob plugin: the ``uniform-is`` estimator, found via the ``lowprob`` entry point."""

from lowprob.plugins import Registrar, hookimpl
from lowprob_example_plugin.uniform_is import UniformImportanceSampling

__version__ = "0.1.0"


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register ``uniform-is``."""
    registrar.add_estimator(UniformImportanceSampling)
