"""Federated meta-learning across labs on Flower: labs share what they learned, never their measurements.

Each lab keeps its own graph store and families; per round it adapts the shared start locally
(FOMAML, Meta-SGD or Reptile, or plain supervised training for the FedAvg baseline) and sends only
a weight-shaped update plus scalar metrics. The server checks every update (finite, not
oversized), averages the good ones, steps its optimiser and writes a round checkpoint; the final
start is an ordinary predictor checkpoint (``matmeta predict/finetune --model``).

Modules: ``tasks`` (the only door to the predictor app), ``config``, ``messages``, ``local``
(one lab's update), ``aggregate`` (server maths and state), ``privacy``, ``export``, ``flower``
(Flower adapters: strategy and client), ``run`` (serve / join / simulate processes), ``labs``.
"""
