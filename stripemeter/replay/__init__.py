"""Replay: the operator's repair tool. Counts the too-late events of a window exactly once, through
the meter, so the change reaches Stripe like any other (``window`` parses the request, ``plan``
decides the corrections, ``runner`` runs a dry-run or an apply)."""
