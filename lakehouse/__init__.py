"""A declarative asset-graph lakehouse: Dagster assets over Spark and Delta, from landing to ML."""

__version__ = "0.1.0"
