"""Hook specifications: the whole contract between bhcore and its plugins.

Stage hooks other than ``bh_fill_header`` are first-result: exactly one selected
backend answers. ``None`` only ever means "not mine"; a backend that ran and found
nothing returns an empty result; a backend that failed raises a ``BhError``.
"""
from __future__ import annotations

import pluggy

PROJECT = "bhcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bh_plugin_info():
    """Describe this plugin.

    :return: a ``bhcore.plugins.PluginInfo`` (name, stage, version, settings model,
        executables it needs, whether it is implemented).
    """


@hookspec
def bh_fill_header(frame, obs):
    """Return the standard header cards this plugin can set for ``frame``.

    :param frame: the raw ``Frame`` (never modified).
    :param obs: the resolved, read-only observatory settings (or None).
    :return: a dict ``{KEYWORD: value}`` or ``{KEYWORD: (value, comment)}``, or None.
        Every plugin is asked; the core merges the answers, detects conflicts and
        records who set what.
    """


@hookspec(firstresult=True)
def bh_reference_catalog(name, center, radius_deg, epoch, settings):
    """Return reference stars around ``center`` from catalogue ``name``.

    :param name: catalogue backend name (``gaia``, ``tycho2_local``, ...).
    :param center: ``astropy.coordinates.SkyCoord`` of the field centre.
    :param radius_deg: cone radius in degrees.
    :param epoch: ``astropy.time.Time`` to propagate proper motions to, or None.
    :param settings: mapping of resolved settings.
    :return: an astropy Table with ``ra, dec`` (deg) and magnitude columns, or None
        if ``name`` is not this plugin's catalogue.
    """


@hookspec(firstresult=True)
def bh_solve_astrometry(frame, sources, settings):
    """Return an ``AstrometryResult`` for ``frame``.

    :param frame: the standardised ``Frame``.
    :param sources: a ``SourceTable`` of detections, or None to detect internally.
    :param settings: mapping of resolved settings (includes ``backend``).
    :return: ``AstrometryResult``, or None if the requested backend is not this one.
    """


@hookspec(firstresult=True)
def bh_measure_photometry(frame, settings):
    """Return a ``SourceTable`` of every source measured in ``frame``.

    :param frame: the ``Frame`` (with WCS when astrometry ran).
    :param settings: mapping of resolved settings (includes ``backend``).
    :return: ``SourceTable`` (empty when nothing was found), or None if not mine.
    """


@hookspec(firstresult=True)
def bh_calibrate_photometry(frame, sources, reference, settings):
    """Return a ``CalibrationResult`` tying instrumental to catalogue magnitudes.

    :param frame: the ``Frame``.
    :param sources: the measured ``SourceTable`` with ``ra, dec``.
    :param reference: the reference catalogue Table.
    :param settings: mapping of resolved settings (includes ``backend``).
    :return: ``CalibrationResult``, or None if not mine.
    """
