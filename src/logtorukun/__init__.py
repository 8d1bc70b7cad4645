"""logtorukun: read worker logs from a web page over nothing but SSH."""

__version__ = "0.1.0"
