"""A KV cache that writes each decode step's keys and values in place, with room reserved.

transformers' ``DynamicLayer.update`` grows a layer's cache by concatenation: every
decode step copies the whole cache of every layer into a fresh tensor. At the GRPO
benchmark's full size (64 rows, ~56 prompt + 64 new tokens, 30 layers) those copies
took 1.0-1.5 s of a 12-14 s rollout batch, measured in place (a timer around
``DynamicLayer.update``). :class:`ReservedLayer` keeps the same contract (``keys`` /
``values`` are the cache so far, ``(batch, heads, length, head_dim)``) but makes them
views of a buffer with room for ``capacity`` positions: a step writes its own keys
and values, nothing else is copied. The values are the same tensors' values (a copy
is exact), so decoding is bit-identical to the concatenating cache. The views are not
contiguous, and SDPA reads them ~0.3-0.5 s a batch slower (decode attention is bound
by reading the cache); the net was ~0.6 s a batch over three alternating pairs.

Anything that replaces ``keys`` / ``values`` outside ``update`` (``batch_select_indices``,
``batch_repeat_interleave``, a cache reorder) leaves them off the buffer; the next
``update`` then moves them into a new one. ``crop`` keeps a view of the buffer, which
stays valid.
"""

from __future__ import annotations

from torch import Tensor
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A :class:`~transformers.cache_utils.DynamicLayer` whose ``update`` writes into a
    buffer with room for ``capacity`` positions (grown, by copying, only past it)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._key_buffer: Tensor | None = None
        self._value_buffer: Tensor | None = None

    def _on_buffer(self, length: int, key_states: Tensor) -> bool:
        buffer = self._key_buffer
        return (buffer is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == buffer.data_ptr()
                and self.values.data_ptr() == self._value_buffer.data_ptr()
                and self.keys.shape[:2] == buffer.shape[:2] == key_states.shape[:2]
                and buffer.dtype == key_states.dtype and length <= buffer.shape[-2])

    def _move_to_buffer(self, length: int, key_states: Tensor, value_states: Tensor) -> None:
        n = self.get_seq_length()
        room = max(length, self.capacity)
        b, h = key_states.shape[:2]
        self._key_buffer = key_states.new_empty(b, h, room, key_states.shape[-1])
        self._value_buffer = value_states.new_empty(b, h, room, value_states.shape[-1])
        if n:
            self._key_buffer[..., :n, :].copy_(self.keys)
            self._value_buffer[..., :n, :].copy_(self.values)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs
               ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        length = n + key_states.shape[-2]
        if not self._on_buffer(length, key_states):
            self._move_to_buffer(length, key_states, value_states)
        self._key_buffer[..., n:length, :].copy_(key_states)
        self._value_buffer[..., n:length, :].copy_(value_states)
        self.keys = self._key_buffer[..., :length, :]
        self.values = self._value_buffer[..., :length, :]
        return self.keys, self.values


def reserve(cache, capacity: int) -> bool:
    """Turn each plain ``DynamicLayer`` of ``cache`` (a transformers ``DynamicCache``) into a
    :class:`ReservedLayer` with room for ``capacity`` positions, its contents kept. False
    (and ``cache`` unchanged) where a layer is of another kind (sliding window, static,
    quantized...) or the cache has no ``layers``."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    for i, layer in enumerate(layers):
        reserved = ReservedLayer(capacity)
        if layer.is_initialized:  # moved into a buffer by the first update
            reserved.lazy_initialization(layer.keys, layer.values)
            reserved.keys, reserved.values = layer.keys, layer.values
        layers[i] = reserved
    return True


__all__ = ["ReservedLayer", "reserve"]
