"""The KV layout of a running batch: rows of different lengths that join, leave and shrink alone.

One transformers `DynamicCache` holds every row, left-padded to a common number of slots, with
a boolean slot mask beside it. Each decode step appends one slot to every row; explicit per-row
`position_ids` give each token its true position, and the 2-D attention mask (the slot mask)
hides padding and rewound slots (transformers' `create_causal_mask` combines the causal rule on
physical slots with it, for sdpa and eager attention). So:

* a row joins by being prefilled alone and concatenated, left-padded, along the batch axis;
* a row leaves with `batch_select_indices` (its KV is freed at once);
* a rewind masks the row's last slots out, and the re-fed token takes a new slot at its old
  position id: no other row is touched and no extra forward runs;
* columns nobody uses any more (leading padding, trailing rewound slots) are cut off, and the
  holes rewinds leave are compacted away once they waste more than `compact_slack` slots.

The decoder talks to this class through `prefill`, `forward`, `drop_last` and `remove` only, so a
paged layout (vLLM-style blocks) can replace it on CUDA without touching the decoder or the
server.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

Key = Hashable


def text_config(model: PreTrainedModel):
    """The config of the language model itself (multimodal configs nest it)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class UnsupportedModel(ValueError):
    """The model's cache cannot be rewound row by row (sliding window, recurrent state)."""


def check_supported(model: PreTrainedModel) -> None:
    """Refuse models whose KV cache is not one plain growing tensor per layer.

    Sliding-window layers keep only the last window of keys: a rewind past the window would need
    keys already thrown away, and the padded layout's physical slots would not match the window
    rule. Recurrent or hybrid caches (Mamba, ...) have no per-token state to drop.
    """
    config = text_config(model)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if window or any("sliding" in str(kind) for kind in layer_types):
        raise UnsupportedModel(
            f"{type(model).__name__} uses sliding-window attention (sliding_window={window}); "
            "rewinding its cache row by row is not supported: serve a model with full attention"
        )
    if any(str(kind) not in ("full_attention",) for kind in layer_types):
        raise UnsupportedModel(
            f"{type(model).__name__} has layer types {sorted(set(map(str, layer_types)))}; "
            "only full-attention layers can be rewound"
        )


def _append(
    buffer: torch.Tensor | None, current: torch.Tensor | None, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write `new` after `current` inside `buffer`; a fresh, roomier buffer when needed.

    Returns (buffer, the view of it holding current + new). `current` is reused in place only
    while it still is the front of `buffer` (the layout may have replaced it since).
    """
    held = current.shape[-2] if current is not None and current.numel() else 0
    needed = held + new.shape[-2]
    reusable = (
        buffer is not None
        and current is not None
        and held > 0
        and current.data_ptr() == buffer.data_ptr()
        and current.stride() == buffer.stride()
        and current.shape[:-2] == new.shape[:-2]
        and buffer.shape[-2] >= needed
    )
    if not reusable:
        capacity = needed + max(64, needed // 2)
        buffer = new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
        if held:
            buffer[..., :held, :] = current
    assert buffer is not None
    buffer[..., held:needed, :] = new
    return buffer, buffer[..., :needed, :]


class GrowableLayer(DynamicLayer):
    """A DynamicLayer that appends into spare room instead of concatenating.

    transformers' DynamicLayer copies the whole cache on every decode step (`torch.cat`); here
    keys and values are views into a buffer with room to grow, so a step writes one slot per
    row. Anything that replaces `keys`/`values` (joins, leaves, compaction) simply makes the next
    append start a new buffer.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._key_buffer, self.keys = _append(self._key_buffer, self.keys, key_states)
        self._value_buffer, self.values = _append(self._value_buffer, self.values, value_states)
        return self.keys, self.values


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """A cache of growable full-attention layers, one per decoder layer."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowableLayer() for _ in cache.layers]
    return cache


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    for layer in layers:
        if not isinstance(layer, GrowableLayer):
            raise UnsupportedModel(f"cache layer {type(layer).__name__} cannot be rewound per row")
    return layers


def _pad_left(tensor: torch.Tensor, slots: int) -> torch.Tensor:
    """Add `slots` zero slots before the sequence axis (-2) of a [batch, heads, seq, dim] tensor."""
    if slots == 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = slots
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


def _gather_slots(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per row, the slots `index[row]` of a [batch, heads, seq, dim] tensor."""
    heads, dim = tensor.shape[1], tensor.shape[-1]
    return tensor.gather(2, index[:, None, :, None].expand(-1, heads, -1, dim))


def _pad_mask(valid: torch.Tensor, slots: int) -> torch.Tensor:
    """`slots` unused slots before each row of a [rows, slots] mask."""
    if slots == 0:
        return valid
    return torch.cat([valid.new_zeros(valid.shape[0], slots), valid], dim=1)


class PaddedKV:
    """Every running row's KV in one left-padded cache, with a slot mask."""

    def __init__(self, model: PreTrainedModel, compact_slack: int = 32) -> None:
        check_supported(model)
        self.model = model
        self.compact_slack = compact_slack
        self.keys: list[Key] = []
        """Row keys in batch order."""
        self.cache: DynamicCache | None = None
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=model.device)
        self._staging: dict[Key, DynamicCache] = {}
        """Caches of rows still being prefilled, one per row."""
        self._dense = True
        """No padding and no holes: the forward needs no attention mask."""
        self._untidy = False
        """Set when slots may have gone unused (rewinds, idle rows): tidy after the next forward.
        A step where every row simply appends needs no housekeeping."""

    # -- figures -------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def slots(self) -> int:
        """Slots allocated per row (the padded length)."""
        return int(self.valid.shape[1])

    def tokens_held(self) -> int:
        """Valid KV entries over all rows, staging prefills included."""
        return int(self.valid.sum()) + self._staged_tokens()

    def slots_allocated(self) -> int:
        return self.rows * self.slots + self._staged_tokens()

    def _staged_tokens(self) -> int:
        return sum(cache.get_seq_length() for cache in self._staging.values())

    # -- rows joining ------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, key: Key, token_ids: list[int], final: bool) -> torch.Tensor | None:
        """Feed the next chunk of a row's prompt; on the final chunk the row joins the batch.

        Returns the next-token logits (float32) after the final chunk, else None.
        """
        cache = self._staging.get(key)
        if cache is None:
            cache = self._staging[key] = new_cache(self.model)
        input_ids = torch.tensor([token_ids], device=self.model.device)
        output = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        if not final:
            return None
        del self._staging[key]
        self._join(key, cache)
        return output.logits[0, -1].float()

    @torch.inference_mode()
    def prefill_together(self, keys: list[Key], prompts: list[list[int]]) -> torch.Tensor:
        """Prefill several rows' whole prompts in one left-padded forward; they join the batch.

        Returns each row's next-token logits (float32, [rows, vocab]).
        """
        device = self.valid.device
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        positions = torch.zeros_like(input_ids)
        valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
        for row, prompt in enumerate(prompts):
            start = width - len(prompt)
            input_ids[row, start:] = torch.tensor(prompt, device=device)
            positions[row, start:] = torch.arange(len(prompt), device=device)
            valid[row, start:] = True
        padded = not bool(valid.all())
        cache = new_cache(self.model)
        output = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=valid.long() if padded else None,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if padded:
            # padding queries attend to nothing; whatever they stored must never reach a value sum
            hidden = ~valid[:, None, :, None]
            for layer in _layers(cache):
                layer.keys = layer.keys.masked_fill(hidden, 0)
                layer.values = layer.values.masked_fill(hidden, 0)
        self._join_rows(keys, cache, valid)
        return output.logits[:, -1].float()

    def _join(self, key: Key, cache: DynamicCache) -> None:
        length = cache.get_seq_length()
        valid = torch.ones(1, length, dtype=torch.bool, device=self.valid.device)
        self._join_rows([key], cache, valid)

    def _join_rows(self, keys: list[Key], cache: DynamicCache, valid: torch.Tensor) -> None:
        """Append prefilled rows (their cache and slot mask) to the batch, left-padding the
        shorter side."""
        if self.cache is None or not self.keys:
            self.cache, self.keys, self.valid = cache, list(keys), valid
            self._dense = bool(valid.all())
            return
        length = int(valid.shape[1])
        width = max(self.slots, length)
        mine_pad, theirs_pad = width - self.slots, width - length
        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            mine.keys = torch.cat(
                [_pad_left(mine.keys, mine_pad), _pad_left(theirs.keys, theirs_pad)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, mine_pad), _pad_left(theirs.values, theirs_pad)]
            )
        self.valid = torch.cat([_pad_mask(self.valid, mine_pad), _pad_mask(valid, theirs_pad)])
        self.keys.extend(keys)
        self._dense = bool(self.valid.all())

    # -- rows leaving and shrinking ---------------------------------------------------------------

    def remove(self, key: Key) -> None:
        """Free a row's KV now (finished, cancelled); a row still prefilling is dropped too."""
        self.remove_many([key])

    @torch.inference_mode()
    def remove_many(self, keys: list[Key]) -> None:
        """Free several rows' KV with one copy of the cache (rows often finish together)."""
        leaving = {key for key in keys if self._staging.pop(key, None) is None}
        leaving &= set(self.keys)
        if not leaving:
            return
        keep = [index for index, key in enumerate(self.keys) if key not in leaving]
        self.keys = [self.keys[index] for index in keep]
        if not self.keys:
            self.cache, self.valid = None, self.valid[:0, :0]
            return
        assert self.cache is not None
        self.cache.batch_select_indices(torch.tensor(keep, device=self.valid.device))
        self.valid = self.valid[keep]
        self._tidy()

    @torch.inference_mode()
    def drop_last(self, key: Key, slots: int) -> None:
        """Mask out the row's last `slots` valid slots (a rewind)."""
        if slots <= 0:
            return
        row = self.keys.index(key)
        held = torch.nonzero(self.valid[row]).squeeze(1)
        self.valid[row, held[-slots:]] = False
        self._untidy = True
        self._dense = False

    # -- the decode step --------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, feeds: Sequence[tuple[int, int] | None]) -> torch.Tensor:
        """One batched forward: `feeds[i]` = (token, position) for row i, None to idle the row.

        Every row takes one new slot; an idle row's slot is masked out at once (its logits are
        meaningless). Returns the next-token logits, float32, [rows, vocab].
        """
        assert self.cache is not None and len(feeds) == self.rows
        device = self.valid.device
        idle = None in feeds
        tokens = [feed[0] if feed else 0 for feed in feeds]
        positions = [feed[1] if feed else 0 for feed in feeds]
        new_slot = torch.tensor([feed is not None for feed in feeds], device=device)
        mask = torch.cat([self.valid, torch.ones(self.rows, 1, dtype=torch.bool, device=device)], 1)
        output = self.model(
            input_ids=torch.tensor(tokens, device=device).unsqueeze(1),
            position_ids=torch.tensor(positions, device=device).unsqueeze(1),
            attention_mask=None if self._dense and not idle else mask.long(),
            cache=self.cache,
            use_cache=True,
        )
        self.valid = torch.cat([self.valid, new_slot.unsqueeze(1)], dim=1)
        if self._untidy or idle:
            self._tidy()
        return output.logits[:, -1].float()

    # -- housekeeping ---------------------------------------------------------------------------

    def _tidy(self) -> None:
        """Trim and compact, then note that the batch is tidy and whether it is dense."""
        self._trim()
        self._untidy = False
        self._dense = bool(self.valid.all())

    def _trim(self) -> None:
        """Cut columns no row uses, and compact holes once they waste `compact_slack` slots."""
        assert self.cache is not None
        used = self.valid.any(dim=0)
        if not bool(used.any()):
            return
        first = int(used.nonzero()[0])
        last = int(used.nonzero()[-1]) + 1
        if first > 0 or last < self.slots:
            self._select_columns(slice(first, last))
        longest = int(self.valid.sum(dim=1).max())
        if self.slots - longest >= self.compact_slack:
            self._compact(longest)

    def _select_columns(self, columns: slice) -> None:
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = layer.keys[:, :, columns]
            layer.values = layer.values[:, :, columns]
        self.valid = self.valid[:, columns]

    def _compact(self, longest: int) -> None:
        """Move every row's valid slots to the right end, in order; drop the freed columns."""
        assert self.cache is not None
        # a stable sort puts each row's holes first and its valid slots after, in their order
        order = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices
        index = order[:, self.slots - longest :]
        for layer in _layers(self.cache):
            layer.keys = _gather_slots(layer.keys, index)
            layer.values = _gather_slots(layer.values, index)
        self.valid = self.valid.gather(1, index)
