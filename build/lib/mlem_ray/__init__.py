"""mlem_ray: distributed hyperparameter search for self-supervised event-sequence encoders."""
import os

# Arrow's allocator (mimalloc) keeps freed pages for a while before returning them to the OS; on
# a large ingest that retention alone was ~50 MB per GB of decode buffers. Purge at once instead
# (must be set before pyarrow is first imported; a user's own setting wins).
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

__version__ = "0.1.0"
