"""Where operators and producers meet stripemeter over HTTP (aiohttp)."""
