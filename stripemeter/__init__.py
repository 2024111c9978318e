"""stripemeter: Kafka-native usage metering for Stripe Billing Meters."""

__version__ = "0.1.0"
