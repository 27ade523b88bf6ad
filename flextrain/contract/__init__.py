"""What the processes agree on, in one place: the operator, `flextrain run`, the trainer
and the aggregator each derive their side of a boundary from these modules instead of
repeating a string.

Plain Python, the lowest layer of the package: nothing here imports torch, grpc, kopf
or another flextrain module, so every process (the torch-free operator included) can
import it.
"""
