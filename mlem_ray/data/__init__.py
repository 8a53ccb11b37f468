"""Event-sequence data: schema, ingestion, the prepared format, batching, bundled data sets."""
from .batching import FullCollator, PaddedBatch, SequenceDataset, SliceCollator, SliceSampler, gather_windows
from .ingest import IngestSpec, ingest, prepare, read_table
from .prepared import EventSequences, write_prepared
from .schema import DataError, Schema

__all__ = [
    "DataError", "EventSequences", "FullCollator", "IngestSpec", "PaddedBatch", "Schema",
    "SequenceDataset", "SliceCollator", "SliceSampler", "gather_windows", "ingest", "prepare",
    "read_table", "write_prepared",
]
