"""The PostgreSQL schema's contract: ``migrations/NNNN_name.sql``, applied in order by ``stripemeter db
migrate``. Shipped as package data (``stripemeter.schemas.contract``); the wire formats are in
``stripemeter/schemas/``."""
