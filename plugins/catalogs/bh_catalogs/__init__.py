"""bhcore reference catalogues, one entry point per backend (stage 'catalog').

``gaia`` (Gaia DR3 + GSPC synthetic photometry, archive TAP), ``vizier`` (URAT-1,
UCAC-4, NOMAD-1, 2MASS, APASS through astroquery), ``tycho2_local`` (offline,
read from Debian's astrometry.net Tycho-2 index files) and ``file`` (a user
catalogue). Every backend answers ``bh_reference_catalog`` with one table layout:

``source_id, ra, dec`` (deg, at the requested epoch), ``ra_err, dec_err`` (mas),
``pmra, pmdec, pmra_err, pmdec_err`` (mas/yr, pmra includes cos dec),
``parallax, parallax_err`` (mas), ``ref_epoch`` (catalogue epoch, Julian year),
``epoch`` (the epoch the positions now refer to), then magnitudes named by band
(``common.MAG_BANDS``: G BP RP, Johnson-Kron-Cousins U B V R I, sdss_u..sdss_z,
J H Ks, ...) each with ``<band>_err``. Unknown values are NaN. ``meta`` says the
catalogue, backend, main band (``mag_band``), epoch and where the rows came from
(remote, cache file, index files, user file).
"""
__version__ = "0.1.0"
