"""Model-step timing in a TF1 session (docs/design.md, "Throughput protocol").

The batch lives in the graph (a constant behind the reinitializable
iterator), so a step is one ``session.run`` with no ``feed_dict``;
``session.run`` returns only when the fetched values are computed, so it is
its own device synchronisation. The train step is the current phase's train
op (forward, backward, update, its UPDATE_OPS); the inference step is the
eval tower's logits (every batch_norm with ``is_training=False``).
"""

from __future__ import annotations

from common.timing import measure_steps


def timed_step(batch_size: int) -> str:
    """What this backend times (``throughput.timed_step``). Not yet ``common.timing.timed_step``:
    the batch is a graph constant that a ``tf.data`` iterator hands to the step, on the host,
    so on a GPU each step copies it to the device."""
    return (f"one optimizer step on a batch of {int(batch_size)} repeated by a tf.data iterator "
            f"(host memory: a GPU copies it every step), no metric; infer: one inference-mode "
            f"forward pass of that batch")


def model_step_throughput(session, *, initializer, train_step, infer_step, batch_size: int,
                          steps: int, warmup: int, kinds=("train", "infer")) -> dict:
    """``common.timing.measure_steps`` for the train op and the inference logits (``kinds``)."""
    session.run(initializer)

    def synchronised():  # session.run has already waited for the device
        return None

    fetches = {"train": train_step, "infer": infer_step}
    return {kind: measure_steps(lambda fetch=fetches[kind]: session.run(fetch), synchronised,
                                batch_size=batch_size, steps=steps, warmup=warmup)
            for kind in kinds}
