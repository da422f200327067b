"""The ops: one module per op (torch path and public function) beside its Triton kernel (``*_triton``)."""
