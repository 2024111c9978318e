"""The worker's pieces, each owning its part of the Faust app; ``streams/app.py`` composes them."""
