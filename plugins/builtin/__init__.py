"""The plugins that ship with lowprob, loaded by module name before any third-party plugin."""

BUILTIN_MODULES: tuple[str, ...] = (
    "lowprob.plugins.builtin.naive",
    "lowprob.plugins.builtin.conditional_exact",
    "lowprob.plugins.builtin.output_tsmc",
    "lowprob.plugins.builtin.joint_tsmc",
    "lowprob.plugins.builtin.output_tsmc_ctl",
    "lowprob.plugins.builtin.itgis",
    "lowprob.plugins.builtin.mhis",
    "lowprob.plugins.builtin.tsmc_estimators",
    "lowprob.plugins.builtin.activation_extrapolation",
    "lowprob.plugins.builtin.qld",
    "lowprob.plugins.builtin.gld",
    "lowprob.plugins.builtin.constant",
    "lowprob.plugins.builtin.splitting",
    "lowprob.plugins.builtin.gams",
    "lowprob.plugins.builtin.output_gams",
    "lowprob.plugins.builtin.scores",
    "lowprob.plugins.builtin.models",
    "lowprob.plugins.builtin.loaders",
    "lowprob.plugins.builtin.resolvers",
    "lowprob.plugins.builtin.distributions",
    "lowprob.plugins.builtin.planted",
)
"""Built-in plugin modules; each is registered as ``lowprob.<last part>`` (e.g.
``lowprob.naive``)."""
