"""Reference implementations (NumPy float64 and JAX) of every hlwq_kernels op. No torch here.

They read like the math and are what the fast kernels are tested against:
``reference.numpy`` and ``reference.jax`` expose the same function names as ``hlwq_kernels``.
"""
