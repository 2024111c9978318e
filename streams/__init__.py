"""Where events are counted: the worker's stages.

intake    usage.events -> validate -> dead letters | events re-keyed by (tenant, customer)
counting  keyed events -> dedupe, lateness, hour-bucket counters (Faust tables) -> usage.deltas
"""
