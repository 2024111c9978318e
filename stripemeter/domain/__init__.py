"""The bottom layer: domain types and rules that need no I/O (units, time, periods, policies,
errors, configuration, principals, rate limits) and the metric definitions every layer records outcomes in.
Imports nothing of stripemeter above it."""
