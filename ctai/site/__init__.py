"""Going live at a new hospital: the mode (shadow or live) and calibration versions in force
(``state``, kept by ``store``: files under the data dir, or the shared Redis), the site's truth
(``sources``, ``cases``), local validation (``report``), per-site calibration (``calibration``),
the commands' steps (``workflow``) and drift monitoring (``drift``).
"""
