"""One typed, synchronous event bus.

Handlers run in the publisher's call, on the event loop, in subscription
order. That keeps the ingest path free of per-message task switches (the bus
carries tens of thousands of events a second) and makes the order of effects
obvious. Handlers must therefore be quick and must not block; anything slow
(a network write) belongs in the handler's own queue and task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

E = TypeVar("E")
Handler = Callable[[E], None]
Unsubscribe = Callable[[], None]


class EventBus:
    def __init__(self, *, logger: logging.Logger | None = None) -> None:
        # Tuples replaced on (un)subscribe, never mutated: publish iterates them as
        # they are, even when a handler unsubscribes during delivery.
        self._handlers: dict[type[Any], tuple[Callable[[Any], None], ...]] = {}
        self._logger = logger or logging.getLogger("controller.bus")
        self._failing: set[Callable[[Any], None]] = set()
        self.handler_errors = 0

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Call ``handler`` for every published event of exactly ``event_type``."""
        self._handlers[event_type] = (*self._handlers.get(event_type, ()), handler)

        def unsubscribe() -> None:
            handlers = list(self._handlers.get(event_type, ()))
            if handler in handlers:
                handlers.remove(handler)
                self._handlers[event_type] = tuple(handlers)

        return unsubscribe

    def publish(self, event: object) -> None:
        """Deliver ``event`` to its subscribers.

        A failing handler does not stop the others. Its first failure is logged
        with the traceback, later ones only counted until it succeeds again, so
        a bug on a hot path cannot bury the log.
        """
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                self.handler_errors += 1
                if handler not in self._failing:
                    self._failing.add(handler)
                    self._logger.exception(
                        "event handler %s failed on %s", _name(handler), type(event).__name__
                    )
            else:
                if self._failing and handler in self._failing:
                    self._failing.discard(handler)
                    self._logger.info("event handler %s recovered", _name(handler))


def _name(handler: Callable[..., Any]) -> str:
    return getattr(handler, "__qualname__", repr(handler))
