"""Teacher-student anomaly detection trained on good parts only (see docs/anomaly.md)."""
