"""Registry tables, all in one module (sqlmodel's guidance: one metadata, one place).

The obs.info text is the source of truth and is stored whole (``Camera.obsinfo_text``)
so export is lossless; the other camera columns are a searchable summary of it,
rebuilt every time the text is stored. The schema is created and evolved by the
named migrations in ``bhcore.registry.db``; these classes describe its final shape.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, Text
from sqlmodel import Field, SQLModel


class Observatory(SQLModel, table=True):
    """A site: OBSERVAT plus coordinates (East-positive longitude, as in BHTOM2)."""

    __tablename__ = "observatory"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    lon_east_deg: Optional[float] = None
    lat_deg: Optional[float] = None
    alt_m: Optional[float] = None
    description: str = ""


class Camera(SQLModel, table=True):
    """One camera on one telescope: an obs.info entry, keyed by its BHTOM ONAME."""

    __tablename__ = "camera"

    id: Optional[int] = Field(default=None, primary_key=True)
    oname: str = Field(index=True, unique=True)
    observatory_id: Optional[int] = Field(
        default=None, sa_column=Column(Integer, ForeignKey("observatory.id"), index=True))
    obsinfo_text: str = Field(sa_column=Column(Text, nullable=False))
    instrument: Optional[str] = None
    telescope: Optional[str] = None
    description: str = ""
    gain: Optional[float] = None              # e/ADU, camera mode 0
    read_noise_adu: Optional[float] = None    # ADU (obs.info convention)
    saturation: Optional[float] = None        # ADU
    pixel_scale_arcsec: Optional[float] = None
    pixel_size_um: Optional[float] = None
    binning: Optional[int] = None
    maglimit: Optional[float] = None
    filters: str = "[]"                       # JSON list of standard filter names
    settings_json: str = "{}"                 # BH_OPTS, JSON object
    # added by migration m002_camera_provenance
    source_path: Optional[str] = None
    updated_at: Optional[datetime] = Field(default=None, sa_column=Column(DateTime))


class CameraBackend(SQLModel, table=True):
    """Backend choice per stage; ``position`` orders astrometry's fallback list."""

    __tablename__ = "camera_backend"
    __table_args__ = (Index("uq_camera_backend_position", "camera_id", "stage", "position",
                            unique=True),)  # added by migration m003

    id: Optional[int] = Field(default=None, primary_key=True)
    camera_id: int = Field(sa_column=Column(Integer, ForeignKey("camera.id"), nullable=False,
                                            index=True))
    stage: str
    position: int = 0
    backend: str


class SchemaMigration(SQLModel, table=True):
    """One row per applied migration: what ran, and when."""

    __tablename__ = "schema_migration"

    name: str = Field(primary_key=True)
    applied_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
