"""NumPy float64 references. Each op module adds its public names here."""

from reference.numpy.hadamard import hadamard_matrix, hadamard_factors, is_hadamard_size
from reference.numpy.fwht import fwht
