"""ctai and Orthanc, the Python side in one place.

- ``service``: runs Orthanc for ``ctai serve`` (``[orthanc] run``), its configuration written from
  the template ``orthanc/orthanc.json`` with the script ``orthanc/ctai_orthanc.py``, which Orthanc's
  Python plugin runs inside Orthanc's process;
- ``series``: what that script and the worker share: which series are for ctai, their job, and
  the ``ctai-status`` value recorded on each series;
- ``client``: Orthanc's REST API (fetching a series' instances, storing outputs, metadata);
- the ``orthanc`` plugin (``ctai.builtin.orthanc``): loads a series' job, queues its outputs for
  the outbox channel ``orthanc`` and records the outcome on the series.
"""
