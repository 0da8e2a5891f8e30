"""A compiled decode step for the position-addressed layout (`backtrack.slots`).

`torch.compile` of the batched decode forward, prefill staying eager (prompt shapes vary without
bound and a prefill runs once per request):

* on CPU, inductor's C++ backend with frozen weights (constant-folded, prepacked for oneDNN),
  with the batch and the key window dynamic: one graph serves every batch size and context
  (a batch of one is its own graph, as dynamo specialises sizes of 1), so start-up compiles two;
* on CUDA, CUDA graphs (inductor's `triton.cudagraphs`), which need fixed shapes: the batch is
  padded to a power of two and each bucket is its own graph, the key window staying dynamic.

The KV buffers are dynamic too, so a buffer that grows (more rows, longer contexts) reuses the
graphs. `CompiledStep.compiles` counts the graphs compiled (each is logged); `warm_up` compiles
them before the server reports healthy, so serving never waits for a compile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import torch

from backtrack.slots import MIN_WIDTH, SlotCache, SlotKV, bucket, position_mask

log = logging.getLogger(__name__)


class CompiledStep:
    """The decode forward of one `SlotKV`, compiled; installs itself as the layout's step."""

    def __init__(self, kv: SlotKV) -> None:
        self.kv = kv
        self.cuda = kv.device.type == "cuda"
        self.shapes: set[tuple[int, int]] = set()
        """(rows, key width) shapes the step has run with."""
        self.compiles = 0
        """Graphs compiled so far."""
        self._marked: SlotCache | None = None
        """The buffers last marked dynamic (they change only when the layout grows them)."""
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self._compiled = torch.compile(kv._eager_step, backend=self._backend, dynamic=False)
        kv.bucket_rows = self.cuda
        kv.decode_step = self

    def uninstall(self) -> None:
        """Give the layout back its eager step (a compile that failed)."""
        self.kv.decode_step = self.kv._eager_step
        self.kv.bucket_rows = False

    def _backend(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        """Inductor, counting: frozen weights on CPU, CUDA graphs on a GPU."""
        from torch._inductor.compile_fx import compile_fx

        self.compiles += 1
        log.info("compiling decode-step graph %d", self.compiles)
        # CPU kernels read the thread count when they run, not when compiled: it may change
        # between steps (`backtrack.core_share`)
        cpu = {"freezing": True, "cpp.dynamic_threads": True}
        patches = {"triton.cudagraphs": True} if self.cuda else cpu
        return cast(Callable, compile_fx(graph, example_inputs, config_patches=patches))

    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        self.shapes.add((int(input_ids.shape[0]), int(mask.shape[-1])))
        if self._marked is not self.kv.cache:
            for buffer in (*self.kv.cache.key_buffers, *self.kv.cache.value_buffers):
                torch._dynamo.mark_dynamic(buffer, 0)
                torch._dynamo.mark_dynamic(buffer, 2)
            self._marked = self.kv.cache
        torch._dynamo.mark_dynamic(mask, 3)
        if not self.cuda and input_ids.shape[0] > 1:
            for tensor in (input_ids, position_ids, mask):
                torch._dynamo.mark_dynamic(tensor, 0)
        return self._compiled(input_ids, position_ids, mask)

    def batch_sizes(self, max_rows: int) -> list[int]:
        """The batch shapes that need a graph of their own, up to `max_rows` rows."""
        if not self.cuda:
            return [1, 2] if max_rows > 1 else [1]
        sizes, size = [], 1
        while size < max_rows:
            sizes.append(size)
            size *= 2
        return [*sizes, bucket(max_rows)]

    @torch.inference_mode()
    def warm_up(self, max_rows: int) -> None:
        """Compile every graph a batch of up to `max_rows` rows needs, with throwaway forwards
        on free slots (so only while no row is decoding)."""
        kv = self.kv
        if kv.rows:
            raise RuntimeError("warm up the compiled step before any row joins")
        for size in self.batch_sizes(max_rows):
            kv._reserve(size, 2 * MIN_WIDTH + 1)
            for width in (MIN_WIDTH, 2 * MIN_WIDTH):  # two widths: the window is seen dynamic
                ids = torch.zeros(size, 1, dtype=torch.long, device=kv.device)
                positions = torch.zeros(size, 1, dtype=torch.long, device=kv.device)
                log.info("compiling the decode step: %d rows, %d positions", size, width)
                self(ids, positions, position_mask(positions, width, kv.window))
