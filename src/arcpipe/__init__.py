"""arcpipe: the ArcFace paper rebuilt as one versioned DAG, from raw faces to benchmark tables."""

__version__ = "0.1.0"
