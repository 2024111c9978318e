"""Tools apart from the runtime: the local stack (real Kafka and PostgreSQL without Docker),
the Stripe emulator, the benchmarks and the demo."""
