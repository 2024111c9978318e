"""Adapters: PostgreSQL (postgres), Kafka and Faust (kafka) and Stripe (stripe)."""
