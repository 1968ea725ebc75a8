"""Signal-propagation primitives (mean-field moment maps) used by archlint's estimator."""
