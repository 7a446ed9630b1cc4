"""The builders the config names: activations, initializers, optimizers, datasets, the MLP and RBM
pre-training. Each is looked up by name in its registry and takes explicit arguments."""
