"""Operator views of the Kafka topics: list with lag, describe, tail with decoding, Kafka's own tools.

Pure parts (``since``, ``kinds``, ``decode``, ``render``, ``kafka_tools.tool_command``) are unit
tested; ``overview`` and ``tail`` are the thin I/O around them. Nothing here joins a consumer group:
reading a topic must never move the pipeline's offsets or trigger a rebalance.
"""
