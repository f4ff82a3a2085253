"""fgd: a single-node serverless function runtime compatible with FunctionGraph."""

__version__ = "0.1.0"
