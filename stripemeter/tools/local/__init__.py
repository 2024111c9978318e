"""The local stack: real Kafka (from Maven Central) and PostgreSQL (from Debian) without Docker."""
