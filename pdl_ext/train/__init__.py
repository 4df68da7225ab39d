"""Training what the losses need: the MDF discriminator series, NIMA quality models, and the task
degradations and bundled photographs they are trained on."""
