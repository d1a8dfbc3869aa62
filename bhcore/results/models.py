"""Tables of the results database: frames, sources, measurements, calibrations, products.

Why a metadata of its own: the registry's tables live in ``SQLModel.metadata``;
the results database is a different file (one per run folder, or a PostgreSQL
database shared by a node), so its tables are declared on a separate registry
and neither ``create_all`` ever creates the other's tables.

Every calibration ever made of a frame is kept (``calibration``, one row per
run, ``current`` marks the one the measurements use), so a change of method can
be traced and undone; the frame row repeats the current calibration's figures
for quick queries, next to the per-frame quality keywords.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Column, DateTime, ForeignKey, Integer, Text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class ResultsBase(SQLModel, registry=registry()):
    """Base of the results tables (its own metadata)."""


class FrameRow(ResultsBase, table=True):
    """One processed frame: times, geometry, quality keywords, current calibration."""

    __tablename__ = "frame"

    id: Optional[int] = Field(default=None, primary_key=True)
    stem: str = Field(index=True, unique=True)
    input_path: str = ""
    folder: str = ""
    status: str = "done"                     # done | calibration_failed | not_calibrated
    status_reason: str = ""
    filename: Optional[str] = None
    object: Optional[str] = None
    filter: Optional[str] = None
    oname: Optional[str] = None
    observatory: Optional[str] = None
    telescope: Optional[str] = None
    instrument: Optional[str] = None
    observer: Optional[str] = None
    origin: Optional[str] = None
    binning: Optional[str] = None
    date_obs: Optional[str] = None
    mjd: Optional[float] = Field(default=None, index=True)   # UTC mid-exposure
    jd: Optional[float] = None
    hjd: Optional[float] = None
    bjd: Optional[float] = None              # BJD_TDB mid-exposure
    exptime: Optional[float] = None
    airmass: Optional[float] = None
    ra: Optional[float] = None               # pointing, deg
    dec: Optional[float] = None
    alt: Optional[float] = None
    az: Optional[float] = None
    fwhm_x: Optional[float] = None           # px
    fwhm_y: Optional[float] = None
    fwhm: Optional[float] = None
    seeing: Optional[float] = None           # arcsec
    ellipticity: Optional[float] = None
    sky: Optional[float] = None              # ADU / px
    sky_noise: Optional[float] = None
    numstars: Optional[int] = None
    astrom_rms: Optional[float] = None       # arcsec
    pixel_scale: Optional[float] = None      # arcsec / px
    zero_point: Optional[float] = None
    zero_point_err: Optional[float] = None
    color_term: Optional[float] = None
    color_term_err: Optional[float] = None
    scatter: Optional[float] = None
    n_cal_stars: Optional[int] = None
    outlier_fraction: Optional[float] = None
    catalog: Optional[str] = None
    band: Optional[str] = None
    bhtom_band: Optional[str] = None
    match_radius: Optional[float] = None
    lim_mag: Optional[float] = None
    photflag: Optional[int] = None
    target_in_field: Optional[bool] = None
    moon_alt: Optional[float] = None
    moon_az: Optional[float] = None
    moon_dist: Optional[float] = None
    moon_illum: Optional[float] = None
    sun_alt: Optional[float] = None
    sun_az: Optional[float] = None
    sun_dist: Optional[float] = None
    calib_version: Optional[str] = None
    pipeline_version: Optional[str] = None
    quality_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    recorded_at: Optional[datetime] = Field(default=None, sa_column=Column(DateTime))


class SourceRow(ResultsBase, table=True):
    """A star on the sky, built by cross-matching measurements of every frame."""

    __tablename__ = "source"

    id: Optional[int] = Field(default=None, primary_key=True)
    ra: float
    dec: float
    n_obs: int = 0
    mean_mag: Optional[float] = None
    rms: Optional[float] = None              # of the relative light curve, mag
    expected_rms: Optional[float] = None
    chi2_red: Optional[float] = None
    stetson_j: Optional[float] = None
    is_variable: bool = False
    is_comparison: bool = False
    comp_weight: Optional[float] = None


class MeasurementRow(ResultsBase, table=True):
    """One source measured on one frame (a row of the calibrated catalogue)."""

    __tablename__ = "measurement"

    id: Optional[int] = Field(default=None, primary_key=True)
    frame_id: int = Field(sa_column=Column(Integer, ForeignKey("frame.id", ondelete="CASCADE"),
                                           nullable=False, index=True))
    source_id: Optional[int] = Field(default=None, sa_column=Column(
        Integer, ForeignKey("source.id", ondelete="SET NULL"), index=True))
    row: int = 0                             # row in the frame's catalogue
    number: int = 0                          # the photometry backend's id
    x: float = 0.0                           # 0-based px
    y: float = 0.0
    ra: Optional[float] = None
    dec: Optional[float] = None
    flux: Optional[float] = None             # ADU per exposure
    flux_err: Optional[float] = None
    flags: int = 0
    mag_inst: Optional[float] = None
    mag_inst_err: Optional[float] = None
    mag: Optional[float] = None              # calibrated (current calibration)
    mag_err: Optional[float] = None
    fwhm: Optional[float] = None
    pos_err: Optional[float] = None          # arcsec, 1-sigma per axis


class CalibrationRow(ResultsBase, table=True):
    """Every calibration run of a frame, with its method version and settings."""

    __tablename__ = "calibration"

    id: Optional[int] = Field(default=None, primary_key=True)
    frame_id: int = Field(sa_column=Column(Integer, ForeignKey("frame.id", ondelete="CASCADE"),
                                           nullable=False, index=True))
    current: bool = True
    status: str = "success"                  # success | error
    reason: str = ""
    backend: str = ""
    method_version: str = ""
    zero_point: Optional[float] = None
    zero_point_err: Optional[float] = None
    color_term: Optional[float] = None
    color_term_err: Optional[float] = None
    n_stars: Optional[int] = None
    outlier_fraction: Optional[float] = None
    scatter: Optional[float] = None
    catalog: str = ""
    band: str = ""
    match_radius_arcsec: Optional[float] = None
    notes_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    settings_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_at: Optional[datetime] = Field(default=None, sa_column=Column(DateTime))


class ProductRow(ResultsBase, table=True):
    """A file a stage wrote for a frame (kept even when a later stage failed)."""

    __tablename__ = "product"

    id: Optional[int] = Field(default=None, primary_key=True)
    frame_id: int = Field(sa_column=Column(Integer, ForeignKey("frame.id", ondelete="CASCADE"),
                                           nullable=False, index=True))
    kind: str                                # header, astrometry, photometry, calibrated ...
    path: str


class ResultsMigration(ResultsBase, table=True):
    """Applied schema migrations of the results database."""

    __tablename__ = "results_migration"

    name: str = Field(primary_key=True)
    applied_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
