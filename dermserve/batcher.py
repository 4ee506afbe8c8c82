"""Micro-batching: concurrent single-user queries answered by one `TwoStage.query_many` call (one store
lookup, one ANN search, one ranker pass), Triton's dynamic batcher idea.

All queries run on one worker thread. The ranker's shared-sequence forward installs hooks on its module for
the duration of a call (`ranking.scoring.forward_shared_sequence`), so two threads must not score on one
ranker at once; and on a 2-core machine torch's intra-op threads use the cores of one forward pass anyway.
While the worker is busy, arriving queries wait in a queue; when it frees, the next pass takes up to
`max_users` waiting queries that share the same version set and query parameters (order kept). A query
arriving at an idle worker waits at most `window_s` for company; `max_users = 1` turns batching off (the
same path, one user per pass).

A query belongs to the version set read when it arrived; a batch never mixes sets, so a swap never mixes
versions inside one response or one pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adserving.two_stage import ServeConfig
from dermserve.versions import VersionSet


@dataclass(frozen=True)
class QueryParams:
    """The per-query fields a batch must share (hashable)."""

    config: ServeConfig
    exclude_ad_ids: tuple[int, ...] = ()
    exclude_advertiser_ids: tuple[int, ...] = ()


@dataclass
class _Item:
    vset: VersionSet
    params: QueryParams
    user_id: int
    future: asyncio.Future[Any]


def run_query_many(vset: VersionSet, user_ids: list[int], p: QueryParams) -> list[Any]:
    """One pass for `user_ids` on `vset` (runs on the worker thread)."""
    return vset.ts.query_many(
        user_ids,
        p.config,
        None,
        np.array(p.exclude_ad_ids, np.int64) if p.exclude_ad_ids else None,
        np.array(p.exclude_advertiser_ids, np.int64) if p.exclude_advertiser_ids else None,
    )


class Batcher:
    """Queue + one worker thread; `submit` returns the query's document or raises its error."""

    def __init__(
        self,
        window_s: float,
        max_users: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_users = max_users
        self.on_batch = on_batch
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="derm-query")
        self._items: deque[_Item] = deque()
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, vset: VersionSet, params: QueryParams, user_id: int) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._items.append(_Item(vset, params, user_id, fut))
        self._kick(loop)
        return await fut

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the worker thread (the batch endpoint's passes), in turn with the queries."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._busy or not self._items:
            return
        if len(self._items) >= self.max_users or self.window_s <= 0 or self.max_users == 1:
            self._start(loop)
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._busy and self._items:
            self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        first = self._items[0]
        batch: list[_Item] = []
        rest: deque[_Item] = deque()
        while self._items:
            it = self._items.popleft()
            if len(batch) < self.max_users and it.vset is first.vset and it.params == first.params:
                batch.append(it)
            else:
                rest.append(it)
        self._items = rest
        batch = [it for it in batch if not it.future.cancelled()]
        if not batch:
            self._kick(loop)
            return
        self._busy = True
        if self.on_batch is not None:
            self.on_batch(len(batch))
        task = loop.run_in_executor(
            self.executor, run_query_many, first.vset, [it.user_id for it in batch], first.params
        )
        task.add_done_callback(lambda t: self._done(loop, batch, t))

    def _done(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], task: asyncio.Future[Any]) -> None:
        self._busy = False
        exc = task.exception()
        for i, it in enumerate(batch):
            if it.future.done():
                continue
            if exc is not None:
                it.future.set_exception(exc)
            else:
                out = task.result()[i]
                if isinstance(out, BaseException):
                    it.future.set_exception(out)
                else:
                    it.future.set_result(out)
        self._kick(loop)
        if self._items and not self._busy:  # queries that waited through the pass go now
            self._start(loop)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
