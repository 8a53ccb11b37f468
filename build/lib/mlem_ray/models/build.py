"""Builders: the only place a Config meets the model classes, which take flat arguments."""
from __future__ import annotations

from .decoder import GenerativeDecoder
from .embedder import EventEmbedder
from .encoders import GRUEncoder, SequenceEncoder, TransformerEncoder


def build_encoder(cfg, schema, max_len: int):
    """Config + schema -> SequenceEncoder (the only place a ModelConfig meets the model classes)."""
    m = cfg.model
    embedder = EventEmbedder([f.num_codes for f in schema.categorical], m.cat_emb_dim, len(schema.numeric),
                             m.num_emb_dim, m.time_encoding)
    if m.encoder == "gru":
        body = GRUEncoder(embedder.out_dim, m.hidden, m.layers, m.dropout)
    else:
        body = TransformerEncoder(embedder.out_dim, m.hidden, m.layers, m.heads, m.dropout, m.pooling, max_len)
    return SequenceEncoder(embedder, body, cfg.uses_embedding_norm, m.embedding_dropout)


def build_decoder(cfg, schema, event_dim: int, emb_dim: int, max_len: int) -> GenerativeDecoder:
    m = cfg.model
    return GenerativeDecoder(emb_dim, event_dim, [f.num_codes for f in schema.categorical], len(schema.numeric),
                             m.decoder_width, m.decoder_layers, m.decoder_heads, m.decoder_ff, max_len, m.dropout)
