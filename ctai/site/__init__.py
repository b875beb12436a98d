"""Going live at a new hospital: shadow mode (``mode``), the site's labelled cases (``sources``),
local validation (``report``), per-site calibration (``calibration``) and drift monitoring
(``drift``). Their state lives in ``store``: files under the data dir, or the shared Redis.
"""
