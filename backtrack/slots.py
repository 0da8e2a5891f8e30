"""The KV layout addressed by position: one preallocated buffer per layer, one slot per row.

Each layer's keys and values live in a buffer of [slots, kv heads, positions, head dim]. A row
owns one slot and writes the token it feeds at the token's own position (gpt-fast's
`k_out[:, :, input_pos] = k`); the attention mask of a query at position p is simply "keys at
positions <= p" (and, for a sliding-window model, "> p - window"). So:

* a rewind is a length decrement: the slots past the row's length hold stale keys that the mask
  never shows and the next feed overwrites, with no copy and no other row touched;
* a row joins by being prefilled into the first free slot; rows stay packed in slots
  0..rows-1, so a decode forward reads a plain view of the buffer;
* a row leaves by having the last row's KV moved into its slot (one row's copy, not the batch's);
* the decode step is one function of (tokens, positions, mask) over plain buffers, so it
  compiles (`backtrack.compiled`) into a few graphs.

The decoder talks to this class through `prefill`, `prefill_together`, `forward`, `drop_last`
and `remove_many`, exactly as to the padded layout (`backtrack.kv.PaddedKV`), which stays the
fallback for models this one cannot hold.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from backtrack.kv import UnsupportedModel, new_cache, text_config

Key = Hashable

MIN_WIDTH = 64
"""The narrowest key window a forward reads; windows grow by doubling (bounded recompiles)."""


def attention_window(model: PreTrainedModel) -> int | None:
    """The sliding window every layer uses (None: full attention); refuses mixed layers.

    With positions kept, a window is only a mask rule: a rewind never needs a key the window
    threw away, because nothing is thrown away.
    """
    config = text_config(model)
    layer_types = {str(kind) for kind in (getattr(config, "layer_types", None) or [])}
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    if layer_types - {"full_attention", "sliding_attention"}:
        raise UnsupportedModel(
            f"{type(model).__name__} has layer types {sorted(layer_types)}: only attention layers "
            "can be addressed by position"
        )
    if layer_types == {"full_attention", "sliding_attention"}:
        raise UnsupportedModel(
            f"{type(model).__name__} mixes full and sliding-window layers: one mask cannot serve both"
        )
    if layer_types == {"full_attention"}:
        return None
    return int(window) if window else None


def kv_shape(model: PreTrainedModel) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from the config; refuses what the config does not pin down."""
    config = text_config(model)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // heads if heads and getattr(config, "hidden_size", None) else None
    )
    if not (layers and kv_heads and head_dim):
        raise UnsupportedModel(f"{type(model).__name__}'s config does not give its KV shape")
    return int(layers), int(kv_heads), int(head_dim)


def slots_supported(model: PreTrainedModel) -> None:
    """Raise UnsupportedModel unless every layer is plain attention this layout can address."""
    attention_window(model)
    kv_shape(model)


class _SlotLayer(CacheLayerMixin):
    """A placeholder layer: transformers' masking code asks the cache what kind each layer is."""

    is_sliding = False
    is_compileable = True

    def _unused(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError("SlotCache.update writes the buffers itself")

    lazy_initialization = update = get_mask_sizes = get_seq_length = get_max_length = _unused


class SlotCache(Cache):
    """The transformers `Cache` the model writes through: each forward writes its tokens'
    keys at (slot, position) and reads slots `first..first+rows`, positions `..width`."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        super().__init__(layers=[_SlotLayer() for _ in keys])
        self.key_buffers = keys
        self.value_buffers = values
        self.first = 0
        self.write_positions = torch.zeros(1, 1, dtype=torch.long)
        self.mask = torch.zeros(1, 1, 1, MIN_WIDTH, dtype=torch.bool)
        """The forward's attention mask: its last axis is how many positions a forward reads
        (a tensor's size, so a compiled step may treat it as dynamic)."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = key_states.shape[0]
        first = self.first
        width = self.mask.shape[-1]
        slots = torch.arange(first, first + rows, device=key_states.device)[:, None]
        keys, values = self.key_buffers[layer_idx], self.value_buffers[layer_idx]
        keys[slots, :, self.write_positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[slots, :, self.write_positions] = value_states.transpose(1, 2).to(values.dtype)
        return (
            keys[first : first + rows, :, :width],
            values[first : first + rows, :, :width],
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.mask.shape[-1])


def position_mask(positions: torch.Tensor, width: int, window: int | None) -> torch.Tensor:
    """[rows, 1, queries, width] booleans: a query at position p sees keys at positions <= p
    (and > p - window)."""
    keys = torch.arange(width, device=positions.device)[None, None, None, :]
    queries = positions[:, None, :, None]
    mask = keys <= queries
    if window is not None:
        mask &= keys > queries - window
    return mask


def bucket(value: int, floor: int = 1) -> int:
    """The power of two at or above `value` (at least `floor`)."""
    size = floor
    while size < value:
        size *= 2
    return size


DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SlotKV:
    """Every running row's KV at its own positions in preallocated per-layer buffers."""

    def __init__(
        self,
        model: PreTrainedModel,
        initial_rows: int = 4,
        initial_positions: int = 256,
        bucket_rows: bool = False,
    ) -> None:
        self.model = model
        self.window = attention_window(model)
        self.layers, self.kv_heads, self.head_dim = kv_shape(model)
        self.max_positions = int(
            getattr(text_config(model), "max_position_embeddings", None) or 1 << 20
        )
        self.device = model.device
        self.dtype = model.dtype
        self.bucket_rows = bucket_rows
        """Pad the decode batch to a power of two (for a compiled step: few shapes)."""
        self.keys: list[Key] = []
        """Row keys in slot order: row i owns slot i."""
        self.lengths: list[int] = []
        """Valid positions per slot: the row's KV is positions 0..length-1."""
        self._staging: dict[Key, DynamicCache] = {}
        """Caches of rows still being prefilled in chunks, one per row."""
        self.cache = self._allocate(initial_rows, min(initial_positions, self.max_positions + 1))
        self.decode_step: DecodeStep = self._eager_step
        """The batched decode forward; `backtrack.compiled` swaps in a compiled one."""

    # -- figures -------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def slots(self) -> int:
        """Positions allocated per slot."""
        return int(self.cache.key_buffers[0].shape[2])

    @property
    def capacity_rows(self) -> int:
        return int(self.cache.key_buffers[0].shape[0])

    def tokens_held(self) -> int:
        return sum(self.lengths) + sum(c.get_seq_length() for c in self._staging.values())

    def slots_allocated(self) -> int:
        """Positions the rows' slots reserve (the buffer's other slots are free for newcomers)."""
        return self.rows * self.slots + sum(c.get_seq_length() for c in self._staging.values())

    # -- buffers -------------------------------------------------------------------------------

    @torch.inference_mode()
    def _allocate(self, rows: int, positions: int) -> SlotCache:
        """Fresh buffers; always inference tensors, so a compiled step sees one kind only."""
        shape = (rows, self.kv_heads, positions, self.head_dim)
        keys = [
            torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)
        ]
        values = [
            torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)
        ]
        return SlotCache(keys, values)

    def _reserve(self, rows: int, positions: int) -> None:
        """Grow the buffers (doubling) so `rows` slots of `positions` positions fit."""
        rows = self.bucket_size(rows)
        if rows <= self.capacity_rows and positions <= self.slots:
            return
        new_rows = bucket(rows, self.capacity_rows)
        new_positions = min(bucket(positions, self.slots), max(positions, self.max_positions + 1))
        grown = self._allocate(new_rows, new_positions)
        old = self.cache
        for layer in range(self.layers):
            grown.key_buffers[layer][: old.key_buffers[layer].shape[0], :, : self.slots] = (
                old.key_buffers[layer]
            )
            grown.value_buffers[layer][: old.value_buffers[layer].shape[0], :, : self.slots] = (
                old.value_buffers[layer]
            )
        self.cache = grown

    def bucket_size(self, rows: int) -> int:
        return bucket(rows) if self.bucket_rows else rows

    def _copy_slot(self, source: int, target: int, length: int) -> None:
        for keys, values in zip(self.cache.key_buffers, self.cache.value_buffers, strict=True):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]

    def _run(
        self,
        first: int,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        logits_to_keep: int | torch.Tensor = 1,
    ) -> torch.Tensor:
        """A forward over slots first..first+rows, writing at `positions`, reading `mask`."""
        self.cache.first = first
        self.cache.write_positions = positions
        self.cache.mask = mask
        output = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return output.logits

    # -- rows joining ------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, key: Key, token_ids: list[int], final: bool) -> torch.Tensor | None:
        """Feed the next chunk of a row's prompt; on the final chunk the row joins the batch.

        Chunks go into a staging cache of the row's own (the slots stay packed meanwhile); the
        final one copies it into the first free slot. Returns float32 logits after the final
        chunk, else None.
        """
        cache = self._staging.get(key)
        if cache is None:
            cache = self._staging[key] = new_cache(self.model)
        input_ids = torch.tensor([token_ids], device=self.device)
        output = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        if not final:
            return None
        del self._staging[key]
        length = cache.get_seq_length()
        self._reserve(self.rows + 1, length + 1)
        slot = self.rows
        for layer, staged in enumerate(cache.layers):
            assert isinstance(staged, DynamicLayer)  # new_cache builds growable dynamic layers
            assert staged.keys is not None and staged.values is not None
            self.cache.key_buffers[layer][slot, :, :length] = staged.keys[0]
            self.cache.value_buffers[layer][slot, :, :length] = staged.values[0]
        self.keys.append(key)
        self.lengths.append(length)
        return output.logits[0, -1].float()

    @torch.inference_mode()
    def prefill_together(self, keys: list[Key], prompts: list[list[int]]) -> torch.Tensor:
        """Prefill several rows' whole prompts in one forward, straight into their slots.

        Prompts are right-padded: a padding token lands past its row's length, where the mask
        hides it and the row's next feed overwrites it. Returns float32 logits [rows, vocab].
        """
        width = max(len(prompt) for prompt in prompts)
        first = self.rows
        self._reserve(first + len(prompts), width + 1)
        input_ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            input_ids[row, : len(prompt)] = torch.tensor(prompt, device=self.device)
        positions = torch.arange(width, device=self.device).expand(len(prompts), -1)
        last = torch.tensor([len(prompt) - 1 for prompt in prompts], device=self.device)
        kept, where = torch.unique(last, return_inverse=True)
        mask = position_mask(positions, width, self.window)
        logits = self._run(first, input_ids, positions, mask, logits_to_keep=kept)
        self.keys.extend(keys)
        self.lengths.extend(len(prompt) for prompt in prompts)
        return logits[torch.arange(len(prompts), device=self.device), where].float()

    # -- rows leaving and shrinking ---------------------------------------------------------------

    def remove(self, key: Key) -> None:
        self.remove_many([key])

    @torch.inference_mode()
    def remove_many(self, keys: list[Key]) -> None:
        """Free rows' slots: the last rows move into the holes, so slots stay packed."""
        leaving = {key for key in keys if self._staging.pop(key, None) is None}
        for key in leaving & set(self.keys):
            slot = self.keys.index(key)
            last = self.rows - 1
            if slot != last:
                self._copy_slot(last, slot, self.lengths[last])
                self.keys[slot], self.lengths[slot] = self.keys[last], self.lengths[last]
            self.keys.pop()
            self.lengths.pop()

    def drop_last(self, key: Key, slots: int) -> None:
        """A rewind: the row's last `slots` positions are forgotten (no copy)."""
        if slots > 0:
            row = self.keys.index(key)
            self.lengths[row] -= slots

    # -- the decode step --------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, feeds: Sequence[tuple[int, int] | None]) -> torch.Tensor:
        """One batched forward: `feeds[i]` = (token, position) for row i, None to idle the row.

        An idle row writes a throwaway key at its own length (the next real feed overwrites it).
        Returns float32 next-token logits [rows, vocab].
        """
        assert len(feeds) == self.rows
        padded = self.bucket_size(self.rows)
        tokens = [0] * padded
        positions = [0] * padded
        for row, feed in enumerate(feeds):
            if feed is None:
                positions[row] = self.lengths[row]
            else:
                tokens[row], positions[row] = feed
                if positions[row] != self.lengths[row]:
                    raise RuntimeError(
                        f"row {row} feeds position {positions[row]} but holds {self.lengths[row]}"
                    )
        width = bucket(max(positions) + 1, MIN_WIDTH)
        # room past the window: a window never spans the whole buffer (one shape rule fewer
        # for a compiled step), and the positions written stay inside it
        self._reserve(padded, width + 1)
        input_ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        position_ids = torch.tensor(positions, device=self.device).unsqueeze(1)
        mask = position_mask(position_ids, width, self.window)
        logits = self.decode_step(input_ids, position_ids, mask)
        for row, feed in enumerate(feeds):
            if feed is not None:
                self.lengths[row] = feed[1] + 1
        return logits[: self.rows]

    def _eager_step(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The decode forward over slots 0..rows: what `backtrack.compiled` compiles."""
        return self._run(0, input_ids, position_ids, mask)[:, -1].float()
