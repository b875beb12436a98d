"""Network clients and servers (DICOM, MLLP, ...), kept apart from the data model."""
