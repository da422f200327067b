"""Reference implementations (NumPy float64 and JAX) of every hlwq_kernels op. No torch here.

They read like the math and are what the fast kernels are tested against:
``hlwq_reference.numpy`` and ``hlwq_reference.jax`` expose the same function names as ``hlwq_kernels``.
"""
