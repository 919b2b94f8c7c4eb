"""Training at scale: the LR schedule in optimizer steps, throughput/MFU monitoring, guards against bad runs."""
