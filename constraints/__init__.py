"""Built-in guidance constraints (installed as ``infd_solve.constraints``)."""
