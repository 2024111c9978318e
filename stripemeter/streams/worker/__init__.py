"""The worker's pieces, each owning its part of the Faust app; ``streams/worker_app.py`` composes them."""
