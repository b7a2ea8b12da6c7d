"""mesflow: real-time shop-floor analytics (collectors -> ingest log -> dataflow -> SQL -> boards)."""

__version__ = "0.1.0"
