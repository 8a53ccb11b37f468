"""Model parts: event embedder -> sequence encoder; the generative decoder."""
from .build import build_decoder, build_encoder
from .decoder import GenerativeDecoder
from .embedder import EventEmbedder, encode_dt
from .encoders import GRUEncoder, SequenceEncoder, TransformerEncoder

__all__ = ["EventEmbedder", "GRUEncoder", "GenerativeDecoder", "SequenceEncoder", "TransformerEncoder",
           "build_decoder", "build_encoder", "encode_dt"]
