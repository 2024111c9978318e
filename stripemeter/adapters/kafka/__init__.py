"""Kafka and Faust: topics and their admin, changelog-backed RocksDB state, the corrections
sender, consumer tuning, lag, and the operator's topic views (inspect)."""
