"""Split training from the client's side: the head and the tail of a model run here, the
trunk on the daemon (a model with `training.enabled`), micro-batch by micro-batch.

    trainer = SplitTrainer(client, "trunk", head, tail, F.cross_entropy, optimizer, depth=4,
                           wire_dtype=torch.float16)
    for x, y in batches:
        losses = trainer.step(x, y)   # the losses of the micro-batches that finished
    losses += trainer.flush()

One micro-batch: head forward here, trunk forward there (a training forward), tail
forward, loss and tail gradients here, trunk backward there (the daemon steps the
trunk's optimizer), head gradients here, and one step of `optimizer` (over the head's
and the tail's parameters).

depth = 1 is sequential: the same arithmetic as training the whole model in one process.
depth = d > 1 keeps up to d micro-batches in flight, so the network and the daemon work
while the client computes. Gradients are then up to d - 1 steps stale on both sides
(pipelined SGD, docs/models.md): each head forward runs on a copy of the head's weights,
which its backward uses, and steps are applied in the order the micro-batches were sent.
"""
import collections
import dataclasses
from concurrent.futures import Future
from typing import Callable, Deque, List, Optional, Sequence

import torch

from .client import Client

try:  # torch 2.x
    from torch.func import functional_call as _functional_call
except ImportError:  # torch 1.13
    from torch.nn.utils.stateless import functional_call as _functional_call

WIRE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class _MicroBatch:
    head_out: torch.Tensor  # the head's output, with its graph
    target: object
    forward: Future
    backward: Optional[Future] = None
    tail_grads: Sequence[Optional[torch.Tensor]] = ()
    loss: float = 0.0


class SplitTrainer:
    """Trains head -> trunk (on the daemon, model `model_id`) -> tail.

    loss_fn(tail_output, target) -> scalar loss. optimizer: over the head's and the
    tail's parameters (the trunk's optimizer is the daemon's, from its config).
    wire_dtype: the dtype activations and gradients cross the wire in (float32,
    float16 or bfloat16); int8_block > 0 sends them int8 blockwise instead (a quarter
    of float32's bytes). learning_rate: sent with each backward (None: the daemon's)."""

    def __init__(self, client: Client, model_id: str, head: torch.nn.Module, tail: torch.nn.Module,
                 loss_fn: Callable, optimizer: torch.optim.Optimizer, *, depth: int = 1,
                 wire_dtype: torch.dtype = torch.float32, int8_block: int = 0,
                 learning_rate: Optional[float] = None, timeout: Optional[float] = None):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {WIRE_DTYPES}")
        if int8_block < 0:
            raise ValueError("int8_block must not be negative")
        self.client = client
        self.model_id = model_id
        self.head = head
        self.tail = tail
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.depth = depth
        self.wire_dtype = wire_dtype
        self.int8_block = int8_block
        self.learning_rate = learning_rate
        self.timeout = timeout
        self.steps = 0
        self._in_flight: Deque[_MicroBatch] = collections.deque()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def step(self, x: torch.Tensor, target) -> List[float]:
        """Sends one micro-batch on its way and returns the losses of those that
        finished, in the order they were sent; at most depth - 1 stay unfinished. A
        failed call raises its SplitlearndError, and that micro-batch is dropped."""
        h = self._head_forward(x)
        forward = self.client.compute_async(self._to_wire(h), self.model_id, training=True,
                                            int8_block=self.int8_block, timeout=self.timeout)
        self._in_flight.append(_MicroBatch(head_out=h, target=target, forward=forward))
        return self._drain(self.depth - 1)

    def flush(self) -> List[float]:
        """Finishes every micro-batch in flight; returns their losses."""
        return self._drain(0)

    # ------------------------------------------------------------ the stages

    def _head_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth == 1:
            return self.head(x)  # no step can come between its forward and its backward
        # A step of another micro-batch changes the head's weights in place before this
        # one's backward; a copy keeps what this forward saw (gradients still reach the
        # parameters through it).
        stash = {name: p.clone() for name, p in self.head.named_parameters()}
        return _functional_call(self.head, stash, (x,))

    def _to_wire(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t if self.int8_block or t.dtype == self.wire_dtype else t.to(self.wire_dtype)

    def _tail(self, mb: _MicroBatch):
        """Tail forward, loss and gradients, then the trunk's backward on its way."""
        result = mb.forward.result()
        z = result.output.to(mb.head_out.dtype).requires_grad_(True)
        loss = self.loss_fn(self.tail(z), mb.target)
        params = [p for p in self.tail.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [z] + params, allow_unused=True)
        mb.tail_grads = grads[1:]
        mb.loss = float(loss.detach())
        mb.backward = self.client.backward_async(self._to_wire(grads[0]), result.forward_id, self.model_id,
                                                 int8_block=self.int8_block, learning_rate=self.learning_rate,
                                                 timeout=self.timeout)

    def _finish(self, mb: _MicroBatch) -> float:
        """The head's gradients from the trunk's input gradient, and one optimizer step."""
        grad_in = mb.backward.result().grad_input.to(mb.head_out.dtype)
        head_params = [p for p in self.head.parameters() if p.requires_grad]
        head_grads = torch.autograd.grad(mb.head_out, head_params, grad_in, allow_unused=True) if head_params else ()
        tail_params = [p for p in self.tail.parameters() if p.requires_grad]
        for p, g in zip(head_params + tail_params, list(head_grads) + list(mb.tail_grads)):
            p.grad = g
        self.optimizer.step()
        for p in head_params + tail_params:
            p.grad = None
        self.steps += 1
        return mb.loss

    def _drain(self, keep: int) -> List[float]:
        losses = []
        while len(self._in_flight) > keep:
            # Every forward that has answered goes on to its backward now, so the link
            # and the daemon stay busy while the oldest finishes.
            for mb in list(self._in_flight)[1:]:
                if mb.backward is None and mb.forward.done() and mb.forward.exception() is None:
                    self._tail(mb)
            oldest = self._in_flight[0]
            try:
                if oldest.backward is None:
                    self._tail(oldest)
                losses.append(self._finish(oldest))
            finally:
                self._in_flight.popleft()
        return losses
