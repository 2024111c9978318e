"""Wire formats (JSON Schemas of the contract records) and SQL migrations."""
