"""The harness tests' name for the toy backend's classes (``tests/toy_backend/backend.py``):
``TRANSFER_BENCH_BACKENDS=fake=fake_backend:FakeBackend`` registers ``FakeBackend`` by its
class, ``fakecrash=fake_backend:CrashingBackend`` one that dies in its first epoch."""

from toy_backend.backend import CrashingBackend, FakeBackend, ToyBackend

__all__ = ["CrashingBackend", "FakeBackend", "ToyBackend"]
