"""Steps: a computation written as a generator that yields the blocking calls it needs (model
runs, which release the GIL) instead of making them, and gets each call's result sent back.
Whoever drives it decides where the blocking calls run: `drive` makes them in the calling
thread; the dynamic batcher makes them in its executor and runs the Python between them on
the event loop. Pure Python, no asyncio.

Example:
    def steps(x):
        logits = yield functools.partial(model.logits, x)
        return softmax(logits)
    probs = drive(steps(x))
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Generator


def drive(steps: Generator):
    """Run `steps` to the end in this thread, making each blocking call it yields (a call that
    raises has its error thrown into the steps, as the batcher does); the steps' result."""
    try:
        call = next(steps)
        while True:
            try:
                value = call()
            except Exception as err:  # noqa: BLE001 - the steps decide what a failed call means
                call = steps.throw(err)
            else:
                call = steps.send(value)
    except StopIteration as stop:
        return stop.value


def whole(steps: Generator) -> Generator:
    """`steps` as one blocking call: all of it, Python included, runs where that call runs."""
    return (yield functools.partial(drive, steps))


def one_step(run: Callable) -> Callable[..., Generator]:
    """A blocking function as steps: `one_step(run)(*args)` yields the one call `run(*args)`."""
    def steps(*args):
        return (yield functools.partial(run, *args))
    return steps
