"""What ctai makes of a result, one module per kind of object, each built and validated here and
sent or stored by the built-in plugins (``ctai.builtin``):

- ``codes``: the findings and concepts every output shares (SNOMED CT, DCM);
- ``common``: what every output shares: calibration naming, dates, the outbox's patient key, and
  encoding as a PS3.10 file (``to_bytes``);
- ``dicom``: what the DICOM objects share: the algorithm as equipment, series and instance
  attributes, patient and study from the source, the copy-and-fill templates;
- ``sr``: the DICOM SR (TID 1500); ``sc``: the Secondary Capture of ``picture``, the result picture;
- ``hl7``: the ORU^R01 message; ``fhir``: the transaction Bundle.

Outputs never import inputs, transports or plugins.
"""
