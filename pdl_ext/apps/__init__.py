"""Applications on top of the library: the `pdl-ext` command line, the demo and the benchmark."""
